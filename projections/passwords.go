package projections

import (
	"cmp"
	"context"
	"database/sql"
	"slices"
	"strconv"
	"time"

	json "github.com/goccy/go-json"

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
	rows *buckets[domain.ContactID, *PasswordReturn]
}

// storedReturn is a password return as written: with its key id, which the
// API does not show.
type storedReturn struct {
	PasswordReturn
	Key string `json:"key_id"`
}

func newPasswordsState(size int) *passwordsState {
	return &passwordsState{rows: newBuckets("password_returns", 256, size, hashContact[domain.ContactID],
		appendPasswordReturn,
		func(raw json.RawMessage) (domain.ContactID, *PasswordReturn, error) {
			var st storedReturn
			if err := json.Unmarshal(raw, &st); err != nil {
				return 0, nil, err
			}
			r := st.PasswordReturn
			r.KeyID = st.Key
			return r.ContactID, &r, nil
		})}
}

func (s *passwordsState) apply(rec *domain.RecordedEvent, env *domain.Envelope) {
	id, ok := domain.ContactIDFromStream(rec.Stream)
	if !ok {
		return
	}
	at := env.OccurredAt.UTC()
	switch e := env.Event.(type) {
	case domain.PasswordIssued:
		s.rows.put(id, &PasswordReturn{ContactID: id, KeyID: e.KeyID, Field: e.Field, Status: PasswordPending, IssuedAt: at, UpdatedAt: at})
	case domain.PasswordReturned:
		r, ok := s.rows.get(id)
		if !ok || r.KeyID != e.KeyID {
			return
		}
		r.Status, r.Attempts, r.NextAttemptAt, r.UpdatedAt = PasswordReturned, e.Attempt, time.Time{}, at
		s.rows.touch(id)
	case domain.PasswordReturnFailed:
		r, ok := s.rows.get(id)
		if !ok || r.KeyID != e.KeyID {
			return
		}
		r.Attempts, r.LastError, r.NextAttemptAt, r.UpdatedAt = e.Attempt, e.Error, e.NextAttemptAt.UTC(), at
		if e.GaveUp {
			r.Status, r.NextAttemptAt = PasswordFailed, time.Time{}
		}
		s.rows.touch(id)
	}
}

// appendPasswordReturn appends a password return as written: a
// storedReturn as JSON.
func appendPasswordReturn(b []byte, _ domain.ContactID, r *PasswordReturn) ([]byte, error) {
	b = append(b, `{"contact_id":`...)
	b = strconv.AppendUint(b, uint64(r.ContactID), 10)
	b = append(b, `,"field":`...)
	b = appendJSONString(b, r.Field)
	b = append(b, `,"status":`...)
	b = appendJSONString(b, r.Status)
	b = append(b, `,"attempts":`...)
	b = strconv.AppendInt(b, int64(r.Attempts), 10)
	b = append(b, `,"last_error":`...)
	b = appendJSONString(b, r.LastError)
	var err error
	if !r.NextAttemptAt.IsZero() { // omitzero
		b = append(b, `,"next_attempt_at":`...)
		if b, err = appendJSONTime(b, r.NextAttemptAt); err != nil {
			return nil, err
		}
	}
	b = append(b, `,"issued_at":`...)
	if b, err = appendJSONTime(b, r.IssuedAt); err != nil {
		return nil, err
	}
	b = append(b, `,"updated_at":`...)
	if b, err = appendJSONTime(b, r.UpdatedAt); err != nil {
		return nil, err
	}
	b = append(b, `,"key_id":`...)
	b = appendJSONString(b, r.KeyID)
	return append(b, '}'), nil
}

func (s *passwordsState) size() int                                   { return len(s.rows.rows) }
func (s *passwordsState) committed()                                  { s.rows.committed() }
func (s *passwordsState) sums() map[uint32]sum                        { return s.rows.sums() }
func (s *passwordsState) flush(ctx context.Context, tx *sql.Tx) error { return s.rows.flush(ctx, tx) }
func (s *passwordsState) encodeAll(part, parts uint32, inFile map[uint32]sum, out chan<- encoded, free <-chan []byte) error {
	return s.rows.encodeAll(part, parts, inFile, out, free)
}
func (s *passwordsState) load(ctx context.Context, db *sql.DB) error { return s.rows.loadAll(ctx, db) }

// Get returns the password return of a contact.
func (v *PasswordReturns) Get(id domain.ContactID) (PasswordReturn, bool) {
	v.p.mu.RLock()
	defer v.p.mu.RUnlock()
	r, ok := v.p.st.(*passwordsState).rows.get(id)
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
	for _, r := range v.p.st.(*passwordsState).rows.rows {
		if status == "" || r.Status == status {
			out = append(out, *r)
		}
	}
	slices.SortFunc(out, func(a, b PasswordReturn) int { return cmp.Compare(a.ContactID, b.ContactID) })
	return out
}
