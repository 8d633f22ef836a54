package projections

import (
	"cmp"
	"context"
	"database/sql"
	"slices"
	"strconv"

	json "github.com/goccy/go-json"

	"github.com/usersync/usersync/domain"
)

// Tag is a row of the tags view. Its JSON is the API's tag.
type Tag struct {
	ID    uint64 `json:"id"`
	Name  string `json:"name"`
	Users int    `json:"users"`
}

// Tags is the tags view: every tag seen on a user, with its latest name,
// and the users that have it.
type Tags struct{ p *projection }

// tagRow is a tag and the contacts whose user has it.
type tagRow struct {
	name    string
	members map[domain.ContactID]struct{}
}

// storedTag is a tag as written.
type storedTag struct {
	ID       uint64             `json:"id"`
	Name     string             `json:"name"`
	Contacts []domain.ContactID `json:"contacts"`
}

type tagsState struct {
	rows      *buckets[uint64, *tagRow]
	byContact map[domain.ContactID][]uint64
}

// newTagsState makes an empty tags view with room for the tags of size
// contacts: there are few tags and many contacts.
func newTagsState(size int) *tagsState {
	s := &tagsState{byContact: make(map[domain.ContactID][]uint64, size)}
	s.rows = newBuckets("tags", 256, 0, hashContact[uint64],
		appendTag,
		func(raw json.RawMessage) (uint64, *tagRow, error) {
			var st storedTag
			if err := json.Unmarshal(raw, &st); err != nil {
				return 0, nil, err
			}
			t := &tagRow{name: st.Name, members: make(map[domain.ContactID]struct{}, len(st.Contacts))}
			for _, c := range st.Contacts {
				t.members[c] = struct{}{}
				s.byContact[c] = append(s.byContact[c], st.ID)
			}
			return st.ID, t, nil
		})
	return s
}

func (s *tagsState) apply(rec *domain.RecordedEvent, env *domain.Envelope) {
	var tags []domain.Tag
	switch e := env.Event.(type) {
	case domain.TagsUpdated:
		tags = e.Tags
	case domain.UserLinked:
		tags = e.Tags
	case domain.UserUnlinked:
	default:
		return
	}
	if id, ok := domain.ContactIDFromStream(rec.Stream); ok {
		s.set(id, tags)
	}
}

// set makes tags the contact's tag set and records the tags' names.
func (s *tagsState) set(id domain.ContactID, tags []domain.Tag) {
	for _, t := range tags {
		row, ok := s.rows.get(t.ID)
		if !ok {
			s.rows.put(t.ID, &tagRow{name: t.Name, members: map[domain.ContactID]struct{}{}})
		} else if row.name != t.Name {
			row.name = t.Name
			s.rows.touch(t.ID)
		}
	}
	old := s.byContact[id]
	next := make([]uint64, 0, len(tags))
	for _, t := range tags {
		next = append(next, t.ID)
	}
	slices.Sort(next)
	next = slices.Compact(next)
	for _, t := range old {
		if _, found := slices.BinarySearch(next, t); !found {
			if row, ok := s.rows.get(t); ok {
				delete(row.members, id)
				s.rows.touch(t)
			}
		}
	}
	for _, t := range next {
		if _, found := slices.BinarySearch(old, t); !found {
			row, _ := s.rows.get(t)
			row.members[id] = struct{}{}
			s.rows.touch(t)
		}
	}
	if len(next) == 0 {
		delete(s.byContact, id)
	} else {
		s.byContact[id] = next
	}
}

// appendTag appends a tag as written: a storedTag as JSON.
func appendTag(b []byte, id uint64, t *tagRow) ([]byte, error) {
	contacts := make([]domain.ContactID, 0, len(t.members))
	for c := range t.members {
		contacts = append(contacts, c)
	}
	slices.Sort(contacts)
	b = append(b, `{"id":`...)
	b = strconv.AppendUint(b, id, 10)
	b = append(b, `,"name":`...)
	b = appendJSONString(b, t.name)
	b = append(b, `,"contacts":[`...)
	for i, c := range contacts {
		if i > 0 {
			b = append(b, ',')
		}
		b = strconv.AppendUint(b, uint64(c), 10)
	}
	return append(b, "]}"...), nil
}

func (s *tagsState) size() int                                   { return len(s.byContact) }
func (s *tagsState) committed()                                  { s.rows.committed() }
func (s *tagsState) sums() map[uint32]sum                        { return s.rows.sums() }
func (s *tagsState) flush(ctx context.Context, tx *sql.Tx) error { return s.rows.flush(ctx, tx) }
func (s *tagsState) encodeAll(part, parts uint32, inFile map[uint32]sum, out chan<- encoded, free <-chan []byte) error {
	return s.rows.encodeAll(part, parts, inFile, out, free)
}
func (s *tagsState) load(ctx context.Context, db *sql.DB) error {
	if err := s.rows.loadAll(ctx, db); err != nil {
		return err
	}
	for c := range s.byContact {
		slices.Sort(s.byContact[c])
	}
	return nil
}

// List returns every tag in id order with its number of users.
func (v *Tags) List() []Tag {
	v.p.mu.RLock()
	defer v.p.mu.RUnlock()
	s := v.p.st.(*tagsState)
	out := make([]Tag, 0, len(s.rows.rows))
	for id, row := range s.rows.rows {
		out = append(out, Tag{ID: id, Name: row.name, Users: len(row.members)})
	}
	slices.SortFunc(out, func(a, b Tag) int { return cmp.Compare(a.ID, b.ID) })
	return out
}

// Get returns one tag.
func (v *Tags) Get(id uint64) (Tag, bool) {
	v.p.mu.RLock()
	defer v.p.mu.RUnlock()
	row, ok := v.p.st.(*tagsState).rows.get(id)
	if !ok {
		return Tag{}, false
	}
	return Tag{ID: id, Name: row.name, Users: len(row.members)}, true
}

// Users returns the contact ids that have the tag, in order.
func (v *Tags) Users(id uint64) []domain.ContactID {
	v.p.mu.RLock()
	defer v.p.mu.RUnlock()
	row, ok := v.p.st.(*tagsState).rows.get(id)
	if !ok {
		return nil
	}
	out := make([]domain.ContactID, 0, len(row.members))
	for c := range row.members {
		out = append(out, c)
	}
	slices.Sort(out)
	return out
}
