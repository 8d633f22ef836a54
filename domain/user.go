package domain

import (
	"fmt"
	"maps"
	"slices"
	"time"
)

// User is the current state of a contact's user, as its events built it.
type User struct {
	UserID       string
	ContactID    ContactID
	Login        string
	Email        string
	Role         Role
	PasswordHash string
	Meta         map[string]string
	Tags         []Tag
	CreatedAt    time.Time
	UpdatedAt    time.Time
}

// PasswordReturn is the state of a generated password on its way to the CRM.
type PasswordReturn struct {
	KeyID  string
	Field  string
	Sealed []byte
	// Attempts is the last attempt a result (returned, failed) closed.
	Attempts int
	// Done is true once returned or given up; the key is then shredded.
	Done bool
	// GaveUp is true once given up: the password can never be returned.
	GaveUp bool
	// IssuedAt is when the password was issued or replaced.
	IssuedAt time.Time
	// NextAttemptAt is when the last failure said to try again.
	NextAttemptAt time.Time
	// Claim is the latest claim of an attempt (nil before the first).
	Claim *AttemptClaim
	// Superseded are the keys of the passwords this one replaced: whoever
	// holds one shreds it, and never returns its password.
	Superseded []string
}

// ContactState is the aggregate of one contact stream.
type ContactState struct {
	ContactID ContactID
	// Version is the version of the last event applied (0: no events).
	Version uint64
	// User is nil until a user is created or linked, and after it moved
	// to another contact.
	User *User
	// MovedTo is the contact the user moved to (UserUnlinked), and Former
	// the user as it was here, until this contact has a user again (0 and
	// nil otherwise). While a move is under way the user's reservations
	// still name this contact: MovedTo says where the user went. Former is
	// never changed in place.
	MovedTo ContactID
	Former  *User
	// Password is the latest issued password, nil if none was issued.
	Password *PasswordReturn
	// Welcome is the welcome email of the latest user created with one
	// asked for, nil if none was.
	Welcome *WelcomeMail
	// Webhooks maps the id of every webhook recorded in the stream to
	// whether an outcome (processed, ignored, failed) closed it.
	Webhooks map[string]bool
	// Pending are the webhooks not yet closed, in the order received.
	Pending []PendingWebhook
}

// PendingWebhook is a webhook waiting to be processed.
type PendingWebhook struct {
	WebhookReceived
	// Attempts counts the transient failures so far.
	Attempts      int
	NextAttemptAt time.Time
}

// NewContactState is the state of a contact with no events.
func NewContactState(id ContactID) *ContactState {
	return &ContactState{ContactID: id, Webhooks: map[string]bool{}}
}

// LoadContact rebuilds a contact's state from its stream.
func LoadContact(id ContactID, events []RecordedEvent) (*ContactState, error) {
	s := NewContactState(id)
	for _, r := range events {
		env, err := Decode(r)
		if err != nil {
			return nil, fmt.Errorf("load %s: %w", id.Stream(), err)
		}
		s.Apply(env)
		s.Version = r.Version
	}
	return s, nil
}

// Relinks reports whether owner, the user found holding an address, is
// this contact's own former user (it left, and the move that took it
// ended on no contact): linking it back keeps it one user.
func (s *ContactState) Relinks(owner *User) bool {
	return s.User == nil && owner != nil && s.Former != nil && owner.ContactID == s.ContactID && s.Former.UserID == owner.UserID
}

// Open reports whether the webhook was recorded in this stream and no
// outcome has closed it yet.
func (s *ContactState) Open(webhookID string) bool {
	closed, seen := s.Webhooks[webhookID]
	return seen && !closed
}

// Apply evolves the state by one event. It never fails: every decision was
// checked before its event was recorded.
func (s *ContactState) Apply(env Envelope) {
	switch e := env.Event.(type) {
	case WebhookReceived:
		if _, ok := s.Webhooks[e.WebhookID]; !ok {
			s.Webhooks[e.WebhookID] = false
			s.Pending = append(s.Pending, PendingWebhook{WebhookReceived: e})
		}
	case WebhookRetrying:
		for i := range s.Pending {
			if s.Pending[i].WebhookID == e.WebhookID {
				s.Pending[i].Attempts, s.Pending[i].NextAttemptAt = e.Attempt, e.NextAttemptAt
			}
		}
	case WebhookProcessed:
		s.close(e.WebhookID)
	case WebhookIgnored:
		s.close(e.WebhookID)
	case WebhookFailed:
		s.close(e.WebhookID)
	case UserCreated, UserLinked, UserUnlinked, MetaPulled, TagsUpdated, RoleChanged, PasswordReplaced:
		before := s.User
		s.User = EvolveUser(s.User, s.ContactID, env)
		switch e := env.Event.(type) {
		case UserUnlinked:
			s.MovedTo, s.Former = e.ToContactID, before
		case UserCreated:
			s.MovedTo, s.Former = 0, nil
			if e.WelcomeEmail {
				s.Welcome = &WelcomeMail{UserID: e.UserID, To: e.Email, Login: e.Login}
			}
		case UserLinked:
			s.MovedTo, s.Former = 0, nil
		case PasswordReplaced:
			if p := s.Password; p != nil && p.KeyID == e.OldKeyID {
				s.Password = &PasswordReturn{KeyID: e.KeyID, Field: e.Field, Sealed: e.Sealed, IssuedAt: env.OccurredAt,
					Superseded: append(slices.Clip(p.Superseded), p.KeyID)}
			}
		}
	case PasswordIssued:
		s.Password = &PasswordReturn{KeyID: e.KeyID, Field: e.Field, Sealed: e.Sealed, IssuedAt: env.OccurredAt}
	case PasswordReturnClaimed:
		if p := s.Password; p != nil && p.KeyID == e.KeyID {
			p.Claim = &AttemptClaim{Attempt: e.Attempt, Until: e.Until, Node: e.Node}
		}
	case PasswordReturned:
		if p := s.Password; p != nil && p.KeyID == e.KeyID {
			p.Attempts = e.Attempt
			p.Done = true
		}
	case PasswordReturnFailed:
		if p := s.Password; p != nil && p.KeyID == e.KeyID {
			p.Attempts = e.Attempt
			p.Done, p.GaveUp = e.GaveUp, e.GaveUp
			p.NextAttemptAt = e.NextAttemptAt
		}
	case WelcomeEmailClaimed:
		if w := s.Welcome; w != nil {
			w.Claim = &AttemptClaim{Attempt: e.Attempt, Until: e.Until, Node: e.Node}
			if w.MessageID == "" {
				w.MessageID = e.MessageID
			}
		}
	case WelcomeEmailSent:
		if w := s.Welcome; w != nil {
			w.Attempts, w.Done = e.Attempt, true
		}
	case WelcomeEmailFailed:
		if w := s.Welcome; w != nil {
			w.Attempts, w.Done, w.GaveUp, w.NextAttemptAt = e.Attempt, e.GaveUp, e.GaveUp, e.NextAttemptAt
		}
	case OperatorActed:
		// An operator's retry: the next attempt is due at once. A given-up
		// mail is open again (one attempt more); a given-up return is not
		// (its key is destroyed).
		switch e.Action {
		case ActionRetryPasswordReturn:
			if p := s.Password; p != nil && !p.Done {
				p.NextAttemptAt = env.OccurredAt
			}
		case ActionRetryWelcomeEmail:
			if w := s.Welcome; w != nil && (!w.Done || w.GaveUp) {
				w.Done, w.GaveUp, w.NextAttemptAt = false, false, env.OccurredAt
			}
		}
	}
}

func (s *ContactState) close(webhookID string) {
	s.Webhooks[webhookID] = true
	s.Pending = slices.DeleteFunc(s.Pending, func(p PendingWebhook) bool { return p.WebhookID == webhookID })
}

// EvolveUser returns the contact's user after one event: a new user for
// UserCreated and UserLinked, nil for UserUnlinked, the changed user for the
// rest. u is changed in place; events that do not concern users return u.
// The user projection and the aggregate share it, so they cannot disagree.
func EvolveUser(u *User, contact ContactID, env Envelope) *User {
	at := env.OccurredAt
	switch e := env.Event.(type) {
	case UserCreated:
		return &User{
			UserID: e.UserID, ContactID: contact, Login: e.Login, Email: e.Email,
			Role: e.Role, PasswordHash: e.PasswordHash, Meta: map[string]string{},
			CreatedAt: at, UpdatedAt: at,
		}
	case UserLinked:
		n := &User{
			UserID: e.UserID, ContactID: contact, Login: e.Login, Email: e.Email,
			Role: e.Role, PasswordHash: e.PasswordHash, Meta: maps.Clone(e.Meta),
			Tags: slices.Clone(e.Tags), CreatedAt: e.CreatedAt, UpdatedAt: at,
		}
		if n.Meta == nil {
			n.Meta = map[string]string{}
		}
		return n
	case UserUnlinked:
		return nil
	}
	if u == nil {
		return nil
	}
	switch e := env.Event.(type) {
	case MetaPulled:
		for _, c := range e.Changes {
			u.applyMeta(c)
		}
	case TagsUpdated:
		u.Tags = slices.Clone(e.Tags)
	case RoleChanged:
		u.Role = e.New
	case PasswordReplaced:
		u.PasswordHash = e.PasswordHash
	default:
		return u
	}
	u.UpdatedAt = at
	return u
}

// MetaEmail is the meta key whose change is the user's email address.
const MetaEmail = "user_email"

func (u *User) applyMeta(c MetaChange) {
	if c.Key == MetaEmail {
		u.Email = c.New
		return
	}
	if c.New == "" {
		delete(u.Meta, c.Key)
		return
	}
	u.Meta[c.Key] = c.New
}
