package projections

import (
	"context"
	"database/sql"
	"fmt"
	"time"

	"github.com/usersync/usersync/domain"
)

// Password return statuses.
const (
	PasswordPending  = "pending"
	PasswordReturned = "returned"
	PasswordFailed   = "failed"
)

// ReplacedNote is the last error of a return whose password was replaced
// (PasswordReplaced) until an attempt of the new one fails.
const ReplacedNote = "replaced: the node holding the first password's key was silent for the take-over delay; a new password is returned instead"

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
// each contact (table password_returns, by contact and by status).
type PasswordReturns struct{ v *Views }

type passwordSlot = contactSlot[PasswordReturn]

const passwordColumns = "contact_id, key_id, field, status, attempts, last_error, next_attempt_at, issued_at, updated_at"

var passwordUpsert = upsertSet("contact_id", passwordColumns)

func scanPasswordReturn(row scanner) (PasswordReturn, error) {
	var r PasswordReturn
	var id, next, issued, updated int64
	if err := row.Scan(&id, &r.KeyID, &r.Field, &r.Status, &r.Attempts, &r.LastError, &next, &issued, &updated); err != nil {
		return PasswordReturn{}, err
	}
	r.ContactID = domain.ContactID(id)
	r.NextAttemptAt, r.IssuedAt, r.UpdatedAt = fromUnixNano(next), fromUnixNano(issued), fromUnixNano(updated)
	return r, nil
}

// password is the contact's return; load false skips reading it (it is
// about to be replaced).
func (b *batch) password(id domain.ContactID, load bool) (*passwordSlot, error) {
	return contactRow(b, b.passwords, id, load, 2, "SELECT "+passwordColumns+" FROM password_returns WHERE contact_id = ?", scanPasswordReturn, "password return")
}

func (b *batch) applyPassword(rec *domain.RecordedEvent, env *domain.Envelope) error {
	id, ok := domain.ContactIDFromStream(rec.Stream)
	if !ok {
		return nil
	}
	at := env.OccurredAt.UTC()
	switch e := env.Event.(type) {
	case domain.PasswordIssued:
		s, err := b.password(id, false)
		if err != nil {
			return err
		}
		s.r = &PasswordReturn{ContactID: id, KeyID: e.KeyID, Field: e.Field, Status: PasswordPending, IssuedAt: at, UpdatedAt: at}
		s.dirty = true
	case domain.PasswordReplaced:
		// The return goes on under the new key, from attempt 1; it has
		// been pending since the first password was issued.
		s, err := b.password(id, true)
		if err != nil {
			return err
		}
		if r := s.r; r != nil && r.KeyID == e.OldKeyID {
			r.KeyID, r.Field, r.Status, r.Attempts, r.NextAttemptAt, r.UpdatedAt = e.KeyID, e.Field, PasswordPending, 0, time.Time{}, at
			r.LastError = ReplacedNote
			s.dirty = true
		}
	case domain.PasswordReturnClaimed:
		// A node is at the attempt: if it closes none by the claim's end,
		// the next attempt may be made then.
		s, err := b.password(id, true)
		if err != nil {
			return err
		}
		if r := s.r; r != nil && r.KeyID == e.KeyID && r.Status == PasswordPending {
			r.NextAttemptAt, r.UpdatedAt = e.Until.UTC(), at
			s.dirty = true
		}
	case domain.PasswordReturned:
		s, err := b.password(id, true)
		if err != nil {
			return err
		}
		if r := s.r; r != nil && r.KeyID == e.KeyID {
			r.Status, r.Attempts, r.NextAttemptAt, r.UpdatedAt = PasswordReturned, e.Attempt, time.Time{}, at
			s.dirty = true
		}
	case domain.PasswordReturnFailed:
		s, err := b.password(id, true)
		if err != nil {
			return err
		}
		if r := s.r; r != nil && r.KeyID == e.KeyID {
			r.Attempts, r.LastError, r.NextAttemptAt, r.UpdatedAt = e.Attempt, e.Error, e.NextAttemptAt.UTC(), at
			if e.GaveUp {
				r.Status, r.NextAttemptAt = PasswordFailed, time.Time{}
			}
			s.dirty = true
		}
	case domain.OperatorActed:
		// An operator's retry makes a pending return due at once (as in
		// domain.ContactState.Apply).
		if e.Action != domain.ActionRetryPasswordReturn {
			return nil
		}
		s, err := b.password(id, true)
		if err != nil {
			return err
		}
		if r := s.r; r != nil && r.Status == PasswordPending {
			r.NextAttemptAt, r.UpdatedAt = at, at
			s.dirty = true
		}
	}
	return nil
}

func (b *batch) flushPasswords() error {
	for id, s := range b.passwords {
		if !s.dirty || s.r == nil {
			continue
		}
		r := s.r
		if err := b.exec("INSERT INTO password_returns("+passwordColumns+") VALUES(?, ?, ?, ?, ?, ?, ?, ?, ?)"+passwordUpsert,
			int64(id), r.KeyID, r.Field, r.Status, r.Attempts, r.LastError, unixNano(r.NextAttemptAt), unixNano(r.IssuedAt), unixNano(r.UpdatedAt)); err != nil {
			return err
		}
		b.wroteID(2, uint64(id))
	}
	return nil
}

// Get returns the password return of a contact.
func (v *PasswordReturns) Get(ctx context.Context, id domain.ContactID) (PasswordReturn, bool, error) {
	r, ok, err := queryRow(ctx, v.v, scanPasswordReturn, "SELECT "+passwordColumns+" FROM password_returns WHERE contact_id = ?", int64(id))
	if err != nil {
		return PasswordReturn{}, false, fmt.Errorf("read password return of contact %d: %w", id, err)
	}
	return r, ok, nil
}

// List returns the password returns with the given status ("" for all), in
// contact id order.
func (v *PasswordReturns) List(ctx context.Context, status string) ([]PasswordReturn, error) {
	out, err := byStatus(ctx, v.v, scanPasswordReturn, "password_returns", passwordColumns, status)
	if err != nil {
		return nil, fmt.Errorf("list password returns: %w", err)
	}
	return out, nil
}

// PasswordSummary is the password-return view in figures.
type PasswordSummary struct {
	// Counts is the number of returns by status (every status present).
	Counts map[string]int
	// OldestPending is when the oldest pending return was issued (zero
	// when none is pending).
	OldestPending time.Time
}

// Summary counts the returns by status (through the status index, without
// reading the rows).
func (v *PasswordReturns) Summary(ctx context.Context) (PasswordSummary, error) {
	s := PasswordSummary{Counts: map[string]int{PasswordPending: 0, PasswordReturned: 0, PasswordFailed: 0}}
	err := v.v.read(func(db *sql.DB) error {
		rows, err := db.QueryContext(ctx, "SELECT status, COUNT(*) FROM password_returns GROUP BY status")
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var status string
			var n int
			if err := rows.Scan(&status, &n); err != nil {
				return err
			}
			s.Counts[status] = n
		}
		if err := rows.Err(); err != nil {
			return err
		}
		var oldest sql.NullInt64
		if err := db.QueryRowContext(ctx, "SELECT MIN(issued_at) FROM password_returns WHERE status = ?", PasswordPending).Scan(&oldest); err != nil {
			return err
		}
		if oldest.Valid {
			s.OldestPending = fromUnixNano(oldest.Int64)
		}
		return nil
	})
	if err != nil {
		return PasswordSummary{}, fmt.Errorf("summarise password returns: %w", err)
	}
	return s, nil
}
