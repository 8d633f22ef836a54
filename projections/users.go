package projections

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
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

// Users is the users view: one row per contact that has a user, in table
// users (by contact id, email and login).
type Users struct{ v *Views }

// userSlot is a user as a batch holds it: nil u once the contact has none.
type userSlot struct {
	u       *domain.User
	version uint64
	// inFile is true when the file has a row for the contact.
	inFile bool
	dirty  bool
}

const userColumns = "contact_id, user_id, login, email, role, meta, tags, created_at, updated_at, version"

var userUpsert = upsertSet("contact_id", userColumns)

func (b *batch) user(id domain.ContactID) (*userSlot, error) {
	if s, ok := b.users[id]; ok {
		return s, nil
	}
	s := &userSlot{}
	if b.mayExistID(0, uint64(id)) {
		row, err := b.queryRow("SELECT "+userColumns+" FROM users WHERE contact_id = ?", int64(id))
		if err != nil {
			return nil, err
		}
		r, err := scanUser(row)
		switch {
		case errors.Is(err, sql.ErrNoRows):
		case err != nil:
			return nil, fmt.Errorf("read user of contact %d: %w", id, err)
		default:
			s.u = &domain.User{UserID: r.UserID, ContactID: r.ContactID, Login: r.Login, Email: r.Email, Role: r.Role,
				Meta: r.Meta, Tags: r.Tags, CreatedAt: r.CreatedAt, UpdatedAt: r.UpdatedAt}
			s.version, s.inFile = r.Version, true
		}
	}
	b.users[id] = s
	b.rows++
	return s, nil
}

func (b *batch) applyUser(rec *domain.RecordedEvent, env *domain.Envelope) error {
	switch env.Event.(type) {
	case domain.UserCreated, domain.UserLinked, domain.UserUnlinked, domain.MetaPulled, domain.TagsUpdated, domain.RoleChanged, domain.PasswordReplaced:
	default:
		return nil
	}
	id, ok := domain.ContactIDFromStream(rec.Stream)
	if !ok {
		return nil
	}
	s, err := b.user(id)
	if err != nil {
		return err
	}
	had := s.u != nil
	if had {
		b.roleDelta[s.u.Role]--
	}
	s.u = domain.EvolveUser(s.u, id, *env)
	if s.u != nil {
		b.roleDelta[s.u.Role]++
	}
	if s.u != nil {
		s.version = rec.Version
	}
	if had || s.u != nil {
		s.dirty = true
	}
	switch {
	case had && s.u == nil:
		b.userDelta--
	case !had && s.u != nil:
		b.userDelta++
	}
	return nil
}

func (b *batch) flushUsers() error {
	ids := make([]domain.ContactID, 0, len(b.users))
	for id, s := range b.users {
		if s.dirty {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	var buf []byte
	args := make([]any, 0, 10*len(ids))
	for _, id := range ids {
		s := b.users[id]
		if s.u == nil {
			if s.inFile {
				if err := b.exec("DELETE FROM users WHERE contact_id = ?", int64(id)); err != nil {
					return err
				}
			}
			continue
		}
		u := s.u
		buf = appendJSONStrings(buf[:0], u.Meta)
		meta := string(buf)
		buf = appendTags(buf[:0], u.Tags)
		args = append(args, int64(id), u.UserID, u.Login, u.Email, string(u.Role), meta, string(buf),
			unixNano(u.CreatedAt), unixNano(u.UpdatedAt), int64(s.version))
		b.wroteID(0, uint64(id))
	}
	return b.insertMany("INSERT INTO users("+userColumns+") VALUES", 10, args, userUpsert)
}

// appendTags appends tags as the JSON array of domain.Tag.
func appendTags(b []byte, tags []domain.Tag) []byte {
	b = append(b, '[')
	for i, t := range tags {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, `{"id":`...)
		b = strconv.AppendUint(b, t.ID, 10)
		b = append(b, `,"name":`...)
		b = appendJSONString(b, t.Name)
		b = append(b, '}')
	}
	return append(b, ']')
}

type scanner interface{ Scan(dest ...any) error }

// scanUser reads a row of users.
func scanUser(row scanner) (User, error) {
	var u User
	var id, created, updated, version int64
	var role, meta, tags string
	if err := row.Scan(&id, &u.UserID, &u.Login, &u.Email, &role, &meta, &tags, &created, &updated, &version); err != nil {
		return User{}, err
	}
	u.ContactID, u.Role, u.Version = domain.ContactID(id), domain.Role(role), uint64(version)
	u.CreatedAt, u.UpdatedAt = fromUnixNano(created), fromUnixNano(updated)
	if err := json.Unmarshal([]byte(meta), &u.Meta); err != nil {
		return User{}, fmt.Errorf("meta of contact %d: %w", id, err)
	}
	if u.Meta == nil {
		u.Meta = map[string]string{}
	}
	if err := json.Unmarshal([]byte(tags), &u.Tags); err != nil {
		return User{}, fmt.Errorf("tags of contact %d: %w", id, err)
	}
	if u.Tags == nil {
		u.Tags = []domain.Tag{}
	}
	return u, nil
}

// one reads the user a query finds.
func (v *Users) one(ctx context.Context, where string, arg any) (User, bool, error) {
	var u User
	err := v.v.read(func(db *sql.DB) error {
		var err error
		u, err = scanUser(db.QueryRowContext(ctx, "SELECT "+userColumns+" FROM users WHERE "+where, arg))
		return err
	})
	if errors.Is(err, sql.ErrNoRows) {
		return User{}, false, nil
	}
	if err != nil {
		return User{}, false, fmt.Errorf("read users view: %w", err)
	}
	return u, true, nil
}

// Get returns the user of a contact.
func (v *Users) Get(ctx context.Context, id domain.ContactID) (User, bool, error) {
	return v.one(ctx, "contact_id = ?", int64(id))
}

// ByEmail returns the user with an email address (the lowest contact id if
// several have it).
func (v *Users) ByEmail(ctx context.Context, email string) (User, bool, error) {
	return v.one(ctx, "email = ? ORDER BY contact_id LIMIT 1", email)
}

// ByLogin returns the user with a login.
func (v *Users) ByLogin(ctx context.Context, login string) (User, bool, error) {
	return v.one(ctx, "login = ? ORDER BY contact_id LIMIT 1", login)
}

// Count is the number of users (kept as the view changes, not counted).
func (v *Users) Count(ctx context.Context) (int, error) {
	var n int
	err := v.v.read(func(db *sql.DB) error {
		return db.QueryRowContext(ctx, "SELECT n FROM view_counts WHERE name = 'users'").Scan(&n)
	})
	if errors.Is(err, sql.ErrNoRows) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("count users: %w", err)
	}
	return n, nil
}

// List returns up to limit users with contact id greater than after, in
// contact id order, and whether more follow. A non-zero tag keeps only users
// with that tag.
func (v *Users) List(ctx context.Context, after domain.ContactID, limit int, tag uint64) (users []User, more bool, err error) {
	if limit <= 0 {
		return []User{}, false, nil
	}
	q := "SELECT " + userColumns + " FROM users WHERE contact_id > ? ORDER BY contact_id LIMIT ?"
	args := []any{int64(after), int64(limit) + 1}
	if tag != 0 {
		q = "SELECT u." + prefixed("u.", userColumns) + " FROM user_tags t JOIN users u ON u.contact_id = t.contact_id" +
			" WHERE t.tag_id = ? AND t.contact_id > ? ORDER BY t.contact_id LIMIT ?"
		args = []any{int64(tag), int64(after), int64(limit) + 1}
	}
	users, err = queryRows(ctx, v.v, []User{}, scanUser, q, args...)
	if err != nil {
		return nil, false, fmt.Errorf("list users: %w", err)
	}
	if len(users) > limit {
		users, more = users[:limit], true
	}
	return users, more, nil
}

// All returns every user in contact id order.
func (v *Users) All(ctx context.Context) ([]User, error) {
	users, _, err := v.List(ctx, 0, int(^uint32(0)>>1), 0)
	return users, err
}

// prefixed puts prefix before every column of a list but the first (which
// the caller prefixes).
func prefixed(prefix, columns string) string {
	out := []byte{}
	for i := 0; i < len(columns); i++ {
		out = append(out, columns[i])
		if columns[i] == ' ' && i > 0 && columns[i-1] == ',' {
			out = append(out, prefix...)
		}
	}
	return string(out)
}
