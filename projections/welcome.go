package projections

import (
	"context"
	"fmt"
	"time"

	"github.com/usersync/usersync/domain"
)

// Welcome mail statuses.
const (
	WelcomePending = "pending"
	WelcomeSent    = "sent"
	WelcomeFailed  = "failed"
)

// WelcomeMail is a row of the welcome-mail view: where the welcome email
// of a contact's latest user created with one asked for stands. A later
// user created with a welcome email asked for replaces the row, as it
// replaces the mail in the contact's state (domain.WelcomeMail).
type WelcomeMail struct {
	ContactID domain.ContactID `json:"contact_id"`
	UserID    string           `json:"user_id"`
	To        string           `json:"to"`
	Status    string           `json:"status"`
	// Attempts is the last attempt closed by a result (sent, failed).
	Attempts  int    `json:"attempts"`
	LastError string `json:"last_error"`
	// NextAttemptAt is when the next attempt may be made: a failure's
	// retry, or the end of a claim not closed yet (zero once settled).
	NextAttemptAt time.Time `json:"next_attempt_at,omitzero"`
	MessageID     string    `json:"message_id,omitempty"`
	CreatedAt     time.Time `json:"created_at"`
	UpdatedAt     time.Time `json:"updated_at"`
}

// WelcomeMails is the welcome-mail view (table welcome_mails, by contact
// and by status): the pending mails a restarted node resumes, the failed
// ones an operator looks at.
type WelcomeMails struct{ v *Views }

// bloomWelcome numbers the welcome_mails rows among a rebuild's keys (the
// other tables use 0 to 4).
const bloomWelcome = 5

type welcomeSlot = contactSlot[WelcomeMail]

const welcomeColumns = "contact_id, user_id, recipient, status, attempts, last_error, next_attempt_at, message_id, created_at, updated_at"

var welcomeUpsert = upsertSet("contact_id", welcomeColumns)

func scanWelcomeMail(row scanner) (WelcomeMail, error) {
	var r WelcomeMail
	var id, next, created, updated int64
	if err := row.Scan(&id, &r.UserID, &r.To, &r.Status, &r.Attempts, &r.LastError, &next, &r.MessageID, &created, &updated); err != nil {
		return WelcomeMail{}, err
	}
	r.ContactID = domain.ContactID(id)
	r.NextAttemptAt, r.CreatedAt, r.UpdatedAt = fromUnixNano(next), fromUnixNano(created), fromUnixNano(updated)
	return r, nil
}

// welcome is the contact's mail; load false skips reading it (it is about
// to be replaced).
func (b *batch) welcome(id domain.ContactID, load bool) (*welcomeSlot, error) {
	return contactRow(b, b.welcomes, id, load, bloomWelcome, "SELECT "+welcomeColumns+" FROM welcome_mails WHERE contact_id = ?", scanWelcomeMail, "welcome mail")
}

// applyWelcome follows domain.ContactState.Apply for the mail: the
// results and claims apply to the contact's current mail.
func (b *batch) applyWelcome(rec *domain.RecordedEvent, env *domain.Envelope) error {
	id, ok := domain.ContactIDFromStream(rec.Stream)
	if !ok {
		return nil
	}
	at := env.OccurredAt.UTC()
	switch e := env.Event.(type) {
	case domain.UserCreated:
		if !e.WelcomeEmail {
			return nil
		}
		s, err := b.welcome(id, false)
		if err != nil {
			return err
		}
		s.r = &WelcomeMail{ContactID: id, UserID: e.UserID, To: e.Email, Status: WelcomePending, CreatedAt: at, UpdatedAt: at}
		s.dirty = true
	case domain.WelcomeEmailClaimed:
		s, err := b.welcome(id, true)
		if err != nil {
			return err
		}
		if r := s.r; r != nil {
			if r.MessageID == "" {
				r.MessageID = e.MessageID
			}
			if r.Status == WelcomePending {
				r.NextAttemptAt = e.Until.UTC()
			}
			r.UpdatedAt = at
			s.dirty = true
		}
	case domain.WelcomeEmailSent:
		s, err := b.welcome(id, true)
		if err != nil {
			return err
		}
		if r := s.r; r != nil {
			r.Status, r.Attempts, r.NextAttemptAt, r.UpdatedAt = WelcomeSent, e.Attempt, time.Time{}, at
			s.dirty = true
		}
	case domain.WelcomeEmailFailed:
		s, err := b.welcome(id, true)
		if err != nil {
			return err
		}
		if r := s.r; r != nil {
			r.Attempts, r.LastError, r.NextAttemptAt, r.UpdatedAt = e.Attempt, e.Error, e.NextAttemptAt.UTC(), at
			if e.GaveUp {
				r.Status, r.NextAttemptAt = WelcomeFailed, time.Time{}
			}
			s.dirty = true
		}
	case domain.OperatorActed:
		// An operator's retry makes the mail due at once, a given-up one
		// pending again (as in domain.ContactState.Apply).
		if e.Action != domain.ActionRetryWelcomeEmail {
			return nil
		}
		s, err := b.welcome(id, true)
		if err != nil {
			return err
		}
		if r := s.r; r != nil && r.Status != WelcomeSent {
			r.Status, r.NextAttemptAt, r.UpdatedAt = WelcomePending, at, at
			s.dirty = true
		}
	}
	return nil
}

func (b *batch) flushWelcomes() error {
	for id, s := range b.welcomes {
		if !s.dirty || s.r == nil {
			continue
		}
		r := s.r
		if err := b.exec("INSERT INTO welcome_mails("+welcomeColumns+") VALUES(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"+welcomeUpsert,
			int64(id), r.UserID, r.To, r.Status, r.Attempts, r.LastError, unixNano(r.NextAttemptAt), r.MessageID,
			unixNano(r.CreatedAt), unixNano(r.UpdatedAt)); err != nil {
			return err
		}
		b.wroteID(bloomWelcome, uint64(id))
	}
	return nil
}

// Get returns the welcome mail of a contact.
func (v *WelcomeMails) Get(ctx context.Context, id domain.ContactID) (WelcomeMail, bool, error) {
	r, ok, err := queryRow(ctx, v.v, scanWelcomeMail, "SELECT "+welcomeColumns+" FROM welcome_mails WHERE contact_id = ?", int64(id))
	if err != nil {
		return WelcomeMail{}, false, fmt.Errorf("read welcome mail of contact %d: %w", id, err)
	}
	return r, ok, nil
}

// List returns the welcome mails with the given status ("" for all), in
// contact id order.
func (v *WelcomeMails) List(ctx context.Context, status string) ([]WelcomeMail, error) {
	out, err := byStatus(ctx, v.v, scanWelcomeMail, "welcome_mails", welcomeColumns, status)
	if err != nil {
		return nil, fmt.Errorf("list welcome mails: %w", err)
	}
	return out, nil
}
