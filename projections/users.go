package projections

import (
	"context"
	"database/sql"
	"maps"
	"slices"
	"strconv"
	"time"

	json "github.com/goccy/go-json"

	"github.com/usersync/usersync/domain"
)

// User is a row of the users view. Its JSON is the API's user view.
type User struct {
	ContactID domain.ContactID  `json:"contact_id"`
	UserID    string            `json:"user_id"`
	Login     string            `json:"login"`
	Email     string            `json:"email"`
	Role      domain.Role       `json:"role"`
	Meta      map[string]string `json:"meta"`
	Tags      []domain.Tag      `json:"tags"`
	CreatedAt time.Time         `json:"created_at"`
	UpdatedAt time.Time         `json:"updated_at"`
	// Version is the contact stream version of the last event that
	// changed the user.
	Version uint64 `json:"version"`
}

// Users is the users view: one row per contact that has a user.
type Users struct{ p *projection }

type userEntry struct {
	u       *domain.User
	version uint64
}

type usersState struct {
	rows *buckets[domain.ContactID, *userEntry]
}

// userBuckets spreads users over the views file.
const userBuckets = 1024

func newUsersState(size int) *usersState {
	return &usersState{rows: newBuckets("users", userBuckets, size, hashContact[domain.ContactID],
		appendUser,
		func(raw json.RawMessage) (domain.ContactID, *userEntry, error) {
			var r User
			if err := json.Unmarshal(raw, &r); err != nil {
				return 0, nil, err
			}
			if r.Meta == nil {
				r.Meta = map[string]string{}
			}
			u := &domain.User{UserID: r.UserID, ContactID: r.ContactID, Login: r.Login, Email: r.Email, Role: r.Role,
				Meta: r.Meta, Tags: r.Tags, CreatedAt: r.CreatedAt, UpdatedAt: r.UpdatedAt}
			return r.ContactID, &userEntry{u: u, version: r.Version}, nil
		})}
}

func (s *usersState) apply(rec *domain.RecordedEvent, env *domain.Envelope) {
	switch env.Event.(type) {
	case domain.UserCreated, domain.UserLinked, domain.UserUnlinked, domain.MetaPulled, domain.TagsUpdated, domain.RoleChanged:
	default:
		return
	}
	id, ok := domain.ContactIDFromStream(rec.Stream)
	if !ok {
		return
	}
	var cur *domain.User
	e, found := s.rows.get(id)
	if found {
		cur = e.u
	}
	next := domain.EvolveUser(cur, id, *env)
	switch {
	case next == nil:
		s.rows.del(id)
	case found:
		// Readers copy entries under the view's lock (as EvolveUser
		// changes cur in place), so the entry is updated in place too.
		e.u, e.version = next, rec.Version
		s.rows.touch(id)
	default:
		s.rows.put(id, &userEntry{u: next, version: rec.Version})
	}
}

func (e *userEntry) row() User {
	tags := e.u.Tags
	if tags == nil {
		tags = []domain.Tag{}
	}
	return User{
		ContactID: e.u.ContactID, UserID: e.u.UserID, Login: e.u.Login, Email: e.u.Email, Role: e.u.Role,
		Meta: maps.Clone(e.u.Meta), Tags: slices.Clone(tags), CreatedAt: e.u.CreatedAt.UTC(), UpdatedAt: e.u.UpdatedAt.UTC(), Version: e.version,
	}
}

// appendUser appends a user as written: its row, User, as JSON.
func appendUser(b []byte, _ domain.ContactID, e *userEntry) ([]byte, error) {
	u := e.u
	b = append(b, `{"contact_id":`...)
	b = strconv.AppendUint(b, uint64(u.ContactID), 10)
	b = append(b, `,"user_id":`...)
	b = appendJSONString(b, u.UserID)
	b = append(b, `,"login":`...)
	b = appendJSONString(b, u.Login)
	b = append(b, `,"email":`...)
	b = appendJSONString(b, u.Email)
	b = append(b, `,"role":`...)
	b = appendJSONString(b, string(u.Role))
	b = append(b, `,"meta":`...)
	b = appendJSONStrings(b, u.Meta)
	b = append(b, `,"tags":[`...)
	for i, t := range u.Tags {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, `{"id":`...)
		b = strconv.AppendUint(b, t.ID, 10)
		b = append(b, `,"name":`...)
		b = appendJSONString(b, t.Name)
		b = append(b, '}')
	}
	b = append(b, `],"created_at":`...)
	b, err := appendJSONTime(b, u.CreatedAt.UTC())
	if err != nil {
		return nil, err
	}
	b = append(b, `,"updated_at":`...)
	if b, err = appendJSONTime(b, u.UpdatedAt.UTC()); err != nil {
		return nil, err
	}
	b = append(b, `,"version":`...)
	b = strconv.AppendUint(b, e.version, 10)
	return append(b, '}'), nil
}

func (s *usersState) size() int                                   { return len(s.rows.rows) }
func (s *usersState) committed()                                  { s.rows.committed() }
func (s *usersState) sums() map[uint32]sum                        { return s.rows.sums() }
func (s *usersState) flush(ctx context.Context, tx *sql.Tx) error { return s.rows.flush(ctx, tx) }
func (s *usersState) encodeAll(part, parts uint32, inFile map[uint32]sum, out chan<- encoded, free <-chan []byte) error {
	return s.rows.encodeAll(part, parts, inFile, out, free)
}
func (s *usersState) load(ctx context.Context, db *sql.DB) error { return s.rows.loadAll(ctx, db) }

// Get returns the user of a contact.
func (v *Users) Get(id domain.ContactID) (User, bool) {
	v.p.mu.RLock()
	defer v.p.mu.RUnlock()
	e, ok := v.p.st.(*usersState).rows.get(id)
	if !ok {
		return User{}, false
	}
	return e.row(), true
}

// Count is the number of users.
func (v *Users) Count() int {
	v.p.mu.RLock()
	defer v.p.mu.RUnlock()
	return len(v.p.st.(*usersState).rows.rows)
}

// List returns up to limit users with contact id greater than after, in
// contact id order, and whether more follow. A non-zero tag keeps only users
// with that tag.
func (v *Users) List(after domain.ContactID, limit int, tag uint64) (users []User, more bool) {
	v.p.mu.RLock()
	defer v.p.mu.RUnlock()
	rows := v.p.st.(*usersState).rows.rows
	ids := make([]domain.ContactID, 0, len(rows))
	for id, e := range rows {
		if id <= after {
			continue
		}
		if tag != 0 && !slices.ContainsFunc(e.u.Tags, func(t domain.Tag) bool { return t.ID == tag }) {
			continue
		}
		ids = append(ids, id)
	}
	slices.Sort(ids)
	if len(ids) > limit {
		ids, more = ids[:limit], true
	}
	users = make([]User, len(ids))
	for i, id := range ids {
		users[i] = rows[id].row()
	}
	return users, more
}

// All returns every user in contact id order.
func (v *Users) All() []User {
	users, _ := v.List(0, int(^uint(0)>>1), 0)
	return users
}
