package projections

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"time"

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
	rows  map[domain.ContactID]*userEntry
	dirty map[domain.ContactID]struct{}
}

func newUsersState() *usersState {
	return &usersState{rows: map[domain.ContactID]*userEntry{}, dirty: map[domain.ContactID]struct{}{}}
}

func (s *usersState) apply(rec domain.RecordedEvent, env domain.Envelope) {
	switch env.Event.(type) {
	case domain.UserCreated, domain.UserLinked, domain.UserUnlinked, domain.MetaPulled, domain.TagsUpdated, domain.RoleChanged:
	default:
		return
	}
	id, ok := domain.ContactIDFromStream(rec.Stream)
	if !ok {
		return
	}
	e := s.rows[id]
	var cur *domain.User
	if e != nil {
		cur = e.u
	}
	next := domain.EvolveUser(cur, id, env)
	if next == nil {
		delete(s.rows, id)
	} else {
		s.rows[id] = &userEntry{u: next, version: rec.Version}
	}
	s.dirty[id] = struct{}{}
}

func (e *userEntry) row() User {
	tags := e.u.Tags
	if tags == nil {
		tags = []domain.Tag{}
	}
	return User{
		ContactID: e.u.ContactID, UserID: e.u.UserID, Login: e.u.Login, Email: e.u.Email, Role: e.u.Role,
		Meta: maps.Clone(e.u.Meta), Tags: slices.Clone(tags), CreatedAt: e.u.CreatedAt, UpdatedAt: e.u.UpdatedAt, Version: e.version,
	}
}

const upsertUser = `INSERT INTO users(contact_id, user_id, login, email, role, meta, tags, created_at, updated_at, version)
	VALUES(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
	ON CONFLICT(contact_id) DO UPDATE SET user_id=excluded.user_id, login=excluded.login, email=excluded.email,
	role=excluded.role, meta=excluded.meta, tags=excluded.tags, created_at=excluded.created_at,
	updated_at=excluded.updated_at, version=excluded.version`

func (s *usersState) write(ctx context.Context, stmt *sql.Stmt, e *userEntry) error {
	meta, err := json.Marshal(e.u.Meta)
	if err != nil {
		return err
	}
	tags, err := json.Marshal(e.u.Tags)
	if err != nil {
		return err
	}
	_, err = stmt.ExecContext(ctx, int64(e.u.ContactID), e.u.UserID, e.u.Login, e.u.Email, string(e.u.Role),
		meta, tags, e.u.CreatedAt.UnixNano(), e.u.UpdatedAt.UnixNano(), int64(e.version))
	if err != nil {
		return fmt.Errorf("write user %d: %w", e.u.ContactID, err)
	}
	return nil
}

func (s *usersState) flush(ctx context.Context, tx *sql.Tx) error {
	if len(s.dirty) == 0 {
		return nil
	}
	stmt, err := tx.PrepareContext(ctx, upsertUser)
	if err != nil {
		return err
	}
	defer stmt.Close()
	for id := range s.dirty {
		if e, ok := s.rows[id]; ok {
			if err := s.write(ctx, stmt, e); err != nil {
				return err
			}
		} else if _, err := tx.ExecContext(ctx, "DELETE FROM users WHERE contact_id = ?", int64(id)); err != nil {
			return fmt.Errorf("delete user %d: %w", id, err)
		}
	}
	clear(s.dirty)
	return nil
}

func (s *usersState) replace(ctx context.Context, tx *sql.Tx) error {
	if _, err := tx.ExecContext(ctx, "DELETE FROM users"); err != nil {
		return err
	}
	stmt, err := tx.PrepareContext(ctx, upsertUser)
	if err != nil {
		return err
	}
	defer stmt.Close()
	for _, e := range s.rows {
		if err := s.write(ctx, stmt, e); err != nil {
			return err
		}
	}
	clear(s.dirty)
	return nil
}

func (s *usersState) load(ctx context.Context, db *sql.DB) error {
	rows, err := db.QueryContext(ctx, `SELECT contact_id, user_id, login, email, role, meta, tags, created_at, updated_at, version FROM users`)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		var (
			id, created, updated, version int64
			u                             domain.User
			role                          string
			meta, tags                    []byte
		)
		if err := rows.Scan(&id, &u.UserID, &u.Login, &u.Email, &role, &meta, &tags, &created, &updated, &version); err != nil {
			return err
		}
		if err := json.Unmarshal(meta, &u.Meta); err != nil {
			return fmt.Errorf("user %d meta: %w", id, err)
		}
		if err := json.Unmarshal(tags, &u.Tags); err != nil {
			return fmt.Errorf("user %d tags: %w", id, err)
		}
		if u.Meta == nil {
			u.Meta = map[string]string{}
		}
		u.ContactID, u.Role = domain.ContactID(id), domain.Role(role)
		u.CreatedAt, u.UpdatedAt = time.Unix(0, created).UTC(), time.Unix(0, updated).UTC()
		s.rows[u.ContactID] = &userEntry{u: &u, version: uint64(version)}
	}
	return rows.Err()
}

// Get returns the user of a contact.
func (v *Users) Get(id domain.ContactID) (User, bool) {
	v.p.mu.RLock()
	defer v.p.mu.RUnlock()
	e, ok := v.p.st.(*usersState).rows[id]
	if !ok {
		return User{}, false
	}
	return e.row(), true
}

// Count is the number of users.
func (v *Users) Count() int {
	v.p.mu.RLock()
	defer v.p.mu.RUnlock()
	return len(v.p.st.(*usersState).rows)
}

// List returns up to limit users with contact id greater than after, in
// contact id order, and whether more follow. A non-zero tag keeps only users
// with that tag.
func (v *Users) List(after domain.ContactID, limit int, tag uint64) (users []User, more bool) {
	v.p.mu.RLock()
	defer v.p.mu.RUnlock()
	rows := v.p.st.(*usersState).rows
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
