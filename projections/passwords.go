package projections

import (
	"cmp"
	"context"
	"database/sql"
	"fmt"
	"slices"
	"time"

	"github.com/usersync/usersync/domain"
)

// Password return statuses.
const (
	PasswordPending  = "pending"
	PasswordReturned = "returned"
	PasswordFailed   = "failed"
)

// PasswordReturn is a row of the password-return view: where a generated
// password stands on its way to FunnelKit. It never holds the password.
type PasswordReturn struct {
	ContactID     domain.ContactID `json:"contact_id"`
	KeyID         string           `json:"-"`
	Field         string           `json:"field"`
	Status        string           `json:"status"`
	Attempts      int              `json:"attempts"`
	LastError     string           `json:"last_error"`
	NextAttemptAt time.Time        `json:"next_attempt_at,omitzero"`
	IssuedAt      time.Time        `json:"issued_at"`
	UpdatedAt     time.Time        `json:"updated_at"`
}

// PasswordReturns is the password-return view: the latest issued password of
// each contact.
type PasswordReturns struct{ p *projection }

type passwordsState struct {
	rows  map[domain.ContactID]*PasswordReturn
	dirty map[domain.ContactID]struct{}
}

func newPasswordsState() *passwordsState {
	return &passwordsState{rows: map[domain.ContactID]*PasswordReturn{}, dirty: map[domain.ContactID]struct{}{}}
}

func (s *passwordsState) apply(rec domain.RecordedEvent, env domain.Envelope) {
	id, ok := domain.ContactIDFromStream(rec.Stream)
	if !ok {
		return
	}
	at := env.OccurredAt
	switch e := env.Event.(type) {
	case domain.PasswordIssued:
		s.rows[id] = &PasswordReturn{ContactID: id, KeyID: e.KeyID, Field: e.Field, Status: PasswordPending, IssuedAt: at, UpdatedAt: at}
	case domain.PasswordReturned:
		r := s.rows[id]
		if r == nil || r.KeyID != e.KeyID {
			return
		}
		r.Status, r.Attempts, r.NextAttemptAt, r.UpdatedAt = PasswordReturned, e.Attempt, time.Time{}, at
	case domain.PasswordReturnFailed:
		r := s.rows[id]
		if r == nil || r.KeyID != e.KeyID {
			return
		}
		r.Attempts, r.LastError, r.NextAttemptAt, r.UpdatedAt = e.Attempt, e.Error, e.NextAttemptAt, at
		if e.GaveUp {
			r.Status, r.NextAttemptAt = PasswordFailed, time.Time{}
		}
	default:
		return
	}
	s.dirty[id] = struct{}{}
}

const upsertPassword = `INSERT INTO password_returns(contact_id, key_id, field, status, attempts, last_error, next_attempt_at, issued_at, updated_at)
	VALUES(?, ?, ?, ?, ?, ?, ?, ?, ?)
	ON CONFLICT(contact_id) DO UPDATE SET key_id=excluded.key_id, field=excluded.field, status=excluded.status,
	attempts=excluded.attempts, last_error=excluded.last_error, next_attempt_at=excluded.next_attempt_at,
	issued_at=excluded.issued_at, updated_at=excluded.updated_at`

func unixNano(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

func fromUnixNano(n int64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n).UTC()
}

func (s *passwordsState) write(ctx context.Context, tx *sql.Tx, ids func(yield func(domain.ContactID) bool)) error {
	stmt, err := tx.PrepareContext(ctx, upsertPassword)
	if err != nil {
		return err
	}
	defer stmt.Close()
	for id := range ids {
		r := s.rows[id]
		if _, err := stmt.ExecContext(ctx, int64(id), r.KeyID, r.Field, r.Status, r.Attempts, r.LastError,
			unixNano(r.NextAttemptAt), unixNano(r.IssuedAt), unixNano(r.UpdatedAt)); err != nil {
			return fmt.Errorf("write password return of contact %d: %w", id, err)
		}
	}
	return nil
}

func (s *passwordsState) flush(ctx context.Context, tx *sql.Tx) error {
	if len(s.dirty) == 0 {
		return nil
	}
	if err := s.write(ctx, tx, mapKeys(s.dirty)); err != nil {
		return err
	}
	clear(s.dirty)
	return nil
}

func (s *passwordsState) replace(ctx context.Context, tx *sql.Tx) error {
	if _, err := tx.ExecContext(ctx, "DELETE FROM password_returns"); err != nil {
		return err
	}
	if err := s.write(ctx, tx, mapKeys(s.rows)); err != nil {
		return err
	}
	clear(s.dirty)
	return nil
}

func mapKeys[K comparable, V any](m map[K]V) func(yield func(K) bool) {
	return func(yield func(K) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

func (s *passwordsState) load(ctx context.Context, db *sql.DB) error {
	rows, err := db.QueryContext(ctx, `SELECT contact_id, key_id, field, status, attempts, last_error, next_attempt_at, issued_at, updated_at FROM password_returns`)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		var r PasswordReturn
		var id, next, issued, updated int64
		if err := rows.Scan(&id, &r.KeyID, &r.Field, &r.Status, &r.Attempts, &r.LastError, &next, &issued, &updated); err != nil {
			return err
		}
		r.ContactID = domain.ContactID(id)
		r.NextAttemptAt, r.IssuedAt, r.UpdatedAt = fromUnixNano(next), fromUnixNano(issued), fromUnixNano(updated)
		s.rows[r.ContactID] = &r
	}
	return rows.Err()
}

// Get returns the password return of a contact.
func (v *PasswordReturns) Get(id domain.ContactID) (PasswordReturn, bool) {
	v.p.mu.RLock()
	defer v.p.mu.RUnlock()
	r, ok := v.p.st.(*passwordsState).rows[id]
	if !ok {
		return PasswordReturn{}, false
	}
	return *r, true
}

// List returns the password returns with the given status ("" for all), in
// contact id order.
func (v *PasswordReturns) List(status string) []PasswordReturn {
	v.p.mu.RLock()
	defer v.p.mu.RUnlock()
	var out []PasswordReturn
	for _, r := range v.p.st.(*passwordsState).rows {
		if status == "" || r.Status == status {
			out = append(out, *r)
		}
	}
	slices.SortFunc(out, func(a, b PasswordReturn) int { return cmp.Compare(a.ContactID, b.ContactID) })
	return out
}
