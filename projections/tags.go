package projections

import (
	"context"
	"database/sql"
	"errors"
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

// Tags is the tags view: every tag seen on a user, with its latest name and
// its number of users (table tags, kept as members come and go), and the
// users that have it (table user_tags).
type Tags struct{ v *Views }

// tagSetSlot is a contact's tags as a batch holds them: as in the file and
// as they are now, both sorted.
type tagSetSlot struct {
	file, now []uint64
}

// tagSlot is a row of tags as a batch holds it.
type tagSlot struct {
	name   string
	users  int
	inFile bool
	dirty  bool
}

func (b *batch) contactTagSet(id domain.ContactID) (*tagSetSlot, error) {
	if s, ok := b.contactTags[id]; ok {
		return s, nil
	}
	s := &tagSetSlot{}
	if b.mayExistID(1, uint64(id)) {
		st, err := b.stmt("SELECT tag_id FROM user_tags WHERE contact_id = ? ORDER BY tag_id")
		if err != nil {
			return nil, err
		}
		rows, err := st.QueryContext(b.ctx, int64(id))
		if err != nil {
			return nil, fmt.Errorf("read tags of contact %d: %w", id, err)
		}
		for rows.Next() {
			var t int64
			if err := rows.Scan(&t); err != nil {
				rows.Close()
				return nil, fmt.Errorf("read tags of contact %d: %w", id, err)
			}
			s.file = append(s.file, uint64(t))
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, fmt.Errorf("read tags of contact %d: %w", id, err)
		}
	}
	s.now = s.file
	b.contactTags[id] = s
	b.rows++
	return s, nil
}

func (b *batch) tag(id uint64) (*tagSlot, error) {
	if s, ok := b.tags[id]; ok {
		return s, nil
	}
	s := &tagSlot{}
	if b.mayExistID(4, id) {
		row, err := b.queryRow("SELECT name, users FROM tags WHERE id = ?", int64(id))
		if err != nil {
			return nil, err
		}
		switch err := row.Scan(&s.name, &s.users); {
		case errors.Is(err, sql.ErrNoRows):
		case err != nil:
			return nil, fmt.Errorf("read tag %d: %w", id, err)
		default:
			s.inFile = true
		}
	}
	b.tags[id] = s
	b.rows++
	return s, nil
}

func (b *batch) applyTags(rec *domain.RecordedEvent, env *domain.Envelope) error {
	var tags []domain.Tag
	switch e := env.Event.(type) {
	case domain.TagsUpdated:
		tags = e.Tags
	case domain.UserLinked:
		tags = e.Tags
	case domain.UserUnlinked:
	default:
		return nil
	}
	id, ok := domain.ContactIDFromStream(rec.Stream)
	if !ok {
		return nil
	}
	// Every tag named gets its latest name, whether or not the contact
	// had it.
	for _, t := range tags {
		row, err := b.tag(t.ID)
		if err != nil {
			return err
		}
		if !row.inFile && !row.dirty || row.name != t.Name {
			row.name, row.dirty = t.Name, true
		}
	}
	set, err := b.contactTagSet(id)
	if err != nil {
		return err
	}
	next := make([]uint64, 0, len(tags))
	for _, t := range tags {
		next = append(next, t.ID)
	}
	slices.Sort(next)
	next = slices.Compact(next)
	for _, t := range set.now {
		if _, found := slices.BinarySearch(next, t); !found {
			row, err := b.tag(t)
			if err != nil {
				return err
			}
			row.users--
			row.dirty = true
		}
	}
	for _, t := range next {
		if _, found := slices.BinarySearch(set.now, t); !found {
			row, err := b.tag(t)
			if err != nil {
				return err
			}
			row.users++
			row.dirty = true
		}
	}
	set.now = next
	return nil
}

func (b *batch) flushTags() error {
	ids := make([]domain.ContactID, 0, len(b.contactTags))
	for id := range b.contactTags {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	var added []any
	for _, id := range ids {
		s := b.contactTags[id]
		for _, t := range s.file {
			if _, found := slices.BinarySearch(s.now, t); !found {
				if err := b.exec("DELETE FROM user_tags WHERE tag_id = ? AND contact_id = ?", int64(t), int64(id)); err != nil {
					return err
				}
			}
		}
		for _, t := range s.now {
			if _, found := slices.BinarySearch(s.file, t); !found {
				added = append(added, int64(t), int64(id))
			}
		}
		if len(s.now) > 0 {
			b.wroteID(1, uint64(id))
		}
	}
	if err := b.insertMany("INSERT INTO user_tags(tag_id, contact_id) VALUES", 2, added, ""); err != nil {
		return err
	}
	for id, s := range b.tags {
		if !s.dirty {
			continue
		}
		if err := b.exec("INSERT INTO tags(id, name, users) VALUES(?, ?, ?) ON CONFLICT(id) DO UPDATE SET name = excluded.name, users = excluded.users", int64(id), s.name, s.users); err != nil {
			return err
		}
		b.wroteID(4, id)
	}
	return nil
}

// List returns every tag in id order with its number of users.
func (v *Tags) List(ctx context.Context) ([]Tag, error) {
	out, err := queryRows(ctx, v.v, []Tag{}, func(rows scanner) (Tag, error) {
		var t Tag
		var id int64
		err := rows.Scan(&id, &t.Name, &t.Users)
		t.ID = uint64(id)
		return t, err
	}, "SELECT id, name, users FROM tags ORDER BY id")
	if err != nil {
		return nil, fmt.Errorf("list tags: %w", err)
	}
	return out, nil
}

// Get returns one tag.
func (v *Tags) Get(ctx context.Context, id uint64) (Tag, bool, error) {
	t := Tag{ID: id}
	err := v.v.read(func(db *sql.DB) error {
		return db.QueryRowContext(ctx, "SELECT name, users FROM tags WHERE id = ?", int64(id)).Scan(&t.Name, &t.Users)
	})
	if errors.Is(err, sql.ErrNoRows) {
		return Tag{}, false, nil
	}
	if err != nil {
		return Tag{}, false, fmt.Errorf("read tag %d: %w", id, err)
	}
	return t, true, nil
}

// Users returns the contact ids that have the tag, in order.
func (v *Tags) Users(ctx context.Context, id uint64) ([]domain.ContactID, error) {
	out, err := queryRows(ctx, v.v, nil, func(rows scanner) (domain.ContactID, error) {
		var c int64
		err := rows.Scan(&c)
		return domain.ContactID(c), err
	}, "SELECT contact_id FROM user_tags WHERE tag_id = ? ORDER BY contact_id", int64(id))
	if err != nil {
		return nil, fmt.Errorf("list users of tag %d: %w", id, err)
	}
	return out, nil
}
