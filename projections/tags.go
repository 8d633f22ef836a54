package projections

import (
	"cmp"
	"context"
	"database/sql"
	"fmt"
	"slices"

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

type member struct {
	tag     uint64
	contact domain.ContactID
}

type tagsState struct {
	names      map[uint64]string
	members    map[uint64]map[domain.ContactID]struct{}
	byContact  map[domain.ContactID][]uint64
	dirtyNames map[uint64]struct{}
	dirtyPairs map[member]struct{}
}

func newTagsState() *tagsState {
	return &tagsState{
		names: map[uint64]string{}, members: map[uint64]map[domain.ContactID]struct{}{},
		byContact: map[domain.ContactID][]uint64{}, dirtyNames: map[uint64]struct{}{}, dirtyPairs: map[member]struct{}{},
	}
}

func (s *tagsState) apply(rec domain.RecordedEvent, env domain.Envelope) {
	id, ok := domain.ContactIDFromStream(rec.Stream)
	if !ok {
		return
	}
	switch e := env.Event.(type) {
	case domain.TagsUpdated:
		s.set(id, e.Tags)
	case domain.UserLinked:
		s.set(id, e.Tags)
	case domain.UserUnlinked:
		s.set(id, nil)
	}
}

// set makes tags the contact's tag set and records the tags' names.
func (s *tagsState) set(id domain.ContactID, tags []domain.Tag) {
	for _, t := range tags {
		if s.names[t.ID] != t.Name || s.members[t.ID] == nil {
			s.names[t.ID] = t.Name
			s.dirtyNames[t.ID] = struct{}{}
		}
		if s.members[t.ID] == nil {
			s.members[t.ID] = map[domain.ContactID]struct{}{}
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
			delete(s.members[t], id)
			s.dirtyPairs[member{t, id}] = struct{}{}
		}
	}
	for _, t := range next {
		if _, found := slices.BinarySearch(old, t); !found {
			s.members[t][id] = struct{}{}
			s.dirtyPairs[member{t, id}] = struct{}{}
		}
	}
	if len(next) == 0 {
		delete(s.byContact, id)
	} else {
		s.byContact[id] = next
	}
}

const (
	upsertTag  = `INSERT INTO tags(id, name) VALUES(?, ?) ON CONFLICT(id) DO UPDATE SET name = excluded.name`
	insertPair = `INSERT OR IGNORE INTO tag_users(tag_id, contact_id) VALUES(?, ?)`
	deletePair = `DELETE FROM tag_users WHERE tag_id = ? AND contact_id = ?`
)

func (s *tagsState) flush(ctx context.Context, tx *sql.Tx) error {
	for id := range s.dirtyNames {
		if _, err := tx.ExecContext(ctx, upsertTag, int64(id), s.names[id]); err != nil {
			return fmt.Errorf("write tag %d: %w", id, err)
		}
	}
	for m := range s.dirtyPairs {
		q := deletePair
		if _, in := s.members[m.tag][m.contact]; in {
			q = insertPair
		}
		if _, err := tx.ExecContext(ctx, q, int64(m.tag), int64(m.contact)); err != nil {
			return fmt.Errorf("write tag %d of contact %d: %w", m.tag, m.contact, err)
		}
	}
	clear(s.dirtyNames)
	clear(s.dirtyPairs)
	return nil
}

func (s *tagsState) replace(ctx context.Context, tx *sql.Tx) error {
	for _, q := range []string{"DELETE FROM tags", "DELETE FROM tag_users"} {
		if _, err := tx.ExecContext(ctx, q); err != nil {
			return err
		}
	}
	tagStmt, err := tx.PrepareContext(ctx, upsertTag)
	if err != nil {
		return err
	}
	defer tagStmt.Close()
	pairStmt, err := tx.PrepareContext(ctx, insertPair)
	if err != nil {
		return err
	}
	defer pairStmt.Close()
	for id, name := range s.names {
		if _, err := tagStmt.ExecContext(ctx, int64(id), name); err != nil {
			return fmt.Errorf("write tag %d: %w", id, err)
		}
		for c := range s.members[id] {
			if _, err := pairStmt.ExecContext(ctx, int64(id), int64(c)); err != nil {
				return fmt.Errorf("write tag %d of contact %d: %w", id, c, err)
			}
		}
	}
	clear(s.dirtyNames)
	clear(s.dirtyPairs)
	return nil
}

func (s *tagsState) load(ctx context.Context, db *sql.DB) error {
	rows, err := db.QueryContext(ctx, "SELECT id, name FROM tags")
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		var id int64
		var name string
		if err := rows.Scan(&id, &name); err != nil {
			return err
		}
		s.names[uint64(id)] = name
		s.members[uint64(id)] = map[domain.ContactID]struct{}{}
	}
	if err := rows.Err(); err != nil {
		return err
	}
	pairs, err := db.QueryContext(ctx, "SELECT tag_id, contact_id FROM tag_users ORDER BY contact_id, tag_id")
	if err != nil {
		return err
	}
	defer pairs.Close()
	for pairs.Next() {
		var tag, contact int64
		if err := pairs.Scan(&tag, &contact); err != nil {
			return err
		}
		t, c := uint64(tag), domain.ContactID(contact)
		if s.members[t] == nil {
			return fmt.Errorf("tag_users names tag %d, which the tags table lacks", t)
		}
		s.members[t][c] = struct{}{}
		s.byContact[c] = append(s.byContact[c], t)
	}
	return pairs.Err()
}

// List returns every tag in id order with its number of users.
func (v *Tags) List() []Tag {
	v.p.mu.RLock()
	defer v.p.mu.RUnlock()
	s := v.p.st.(*tagsState)
	out := make([]Tag, 0, len(s.names))
	for id, name := range s.names {
		out = append(out, Tag{ID: id, Name: name, Users: len(s.members[id])})
	}
	slices.SortFunc(out, func(a, b Tag) int { return cmp.Compare(a.ID, b.ID) })
	return out
}

// Get returns one tag.
func (v *Tags) Get(id uint64) (Tag, bool) {
	v.p.mu.RLock()
	defer v.p.mu.RUnlock()
	s := v.p.st.(*tagsState)
	name, ok := s.names[id]
	return Tag{ID: id, Name: name, Users: len(s.members[id])}, ok
}

// Users returns the contact ids that have the tag, in order.
func (v *Tags) Users(id uint64) []domain.ContactID {
	v.p.mu.RLock()
	defer v.p.mu.RUnlock()
	s := v.p.st.(*tagsState)
	out := make([]domain.ContactID, 0, len(s.members[id]))
	for c := range s.members[id] {
		out = append(out, c)
	}
	slices.Sort(out)
	return out
}
