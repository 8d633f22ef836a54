package domain

import "time"

// Event is a fact recorded in a stream. Its concrete type is one of the
// structs below; EventType names it in the store.
type Event interface {
	EventType() string
}

// Event type names as stored. They never change once released.
const (
	TypeWebhookReceived      = "WebhookReceived"
	TypeWebhookProcessed     = "WebhookProcessed"
	TypeWebhookIgnored       = "WebhookIgnored"
	TypeWebhookFailed        = "WebhookFailed"
	TypeWebhookRetrying      = "WebhookRetrying"
	TypeUserCreated          = "UserCreated"
	TypeUserLinked           = "UserLinked"
	TypeUserUnlinked         = "UserUnlinked"
	TypeMetaPulled           = "MetaPulled"
	TypeTagsUpdated          = "TagsUpdated"
	TypeRoleChanged          = "RoleChanged"
	TypePasswordIssued       = "PasswordIssued"
	TypePasswordReturned     = "PasswordReturned"
	TypePasswordReturnFailed = "PasswordReturnFailed"
	TypeWelcomeEmailSent     = "WelcomeEmailSent"
	TypeWelcomeEmailFailed   = "WelcomeEmailFailed"
	TypeEmailReserved        = "EmailReserved"
	TypeEmailReleased        = "EmailReleased"
	TypeLoginReserved        = "LoginReserved"
)

// Event types of the claims and replacements that make password returns
// and welcome mails once across nodes (docs/scaling.md).
const (
	TypePasswordReturnClaimed = "PasswordReturnClaimed"
	TypePasswordReplaced      = "PasswordReplaced"
	TypeWelcomeEmailClaimed   = "WelcomeEmailClaimed"
)

// TypeOperatorActed is the event type of an operator's action in the
// console, in stream OperatorStream.
const TypeOperatorActed = "OperatorActed"

// OperatorStream is the stream of the operators' actions.
const OperatorStream = "operator"

// Operator actions that concern one contact, recorded (also) in its
// stream: ContactState.Apply and the views read the two retries.
const (
	// ActionRetryPasswordReturn makes a pending return's next attempt due
	// at once.
	ActionRetryPasswordReturn = "retry_password_return"
	// ActionRetryWelcomeEmail makes a welcome mail's next attempt due at
	// once, one given up included (one attempt more).
	ActionRetryWelcomeEmail = "retry_welcome_email"
	// ActionParkedReplay hands a parked event of the contact's stream to
	// its handler again; it changes nothing in the contact's state.
	ActionParkedReplay = "parked_replay"
	// ActionParkedSkip drops a parked event; it changes nothing in the
	// contact's state.
	ActionParkedSkip = "parked_skip"
)

// EventTypes lists every event type name this build writes and reads.
func EventTypes() []string {
	return []string{
		TypeWebhookReceived, TypeWebhookProcessed, TypeWebhookIgnored, TypeWebhookFailed, TypeWebhookRetrying,
		TypeUserCreated, TypeUserLinked, TypeUserUnlinked, TypeMetaPulled, TypeTagsUpdated, TypeRoleChanged,
		TypePasswordIssued, TypePasswordReturned, TypePasswordReturnFailed, TypeWelcomeEmailSent,
		TypeWelcomeEmailFailed, TypeEmailReserved, TypeEmailReleased, TypeLoginReserved,
		TypePasswordReturnClaimed, TypePasswordReplaced, TypeWelcomeEmailClaimed, TypeOperatorActed,
	}
}

// WebhookReceived records a webhook as it arrived, minus its access key and
// any other secret-looking parameter. It is appended before the webhook is
// answered, so an accepted webhook is never lost.
type WebhookReceived struct {
	WebhookID string `json:"webhook_id"`
	// Action is wpf_action lower-cased, as received (add_user is kept as sent).
	Action string `json:"action"`
	// ContactID is contact_id as received; it may be empty or invalid.
	ContactID string `json:"contact_id"`
	// Params are all other parameters (query and body merged, body wins).
	Params     map[string]string `json:"params"`
	Method     string            `json:"method"`
	Source     string            `json:"source"`
	ReceivedAt time.Time         `json:"received_at"`
}

// WebhookProcessed closes a webhook that changed or confirmed a user.
type WebhookProcessed struct {
	WebhookID string `json:"webhook_id"`
	Action    string `json:"action"`
	Message   string `json:"message"`
	// UserID is the user the webhook acted on.
	UserID string `json:"user_id"`
	// Changed lists the event types the webhook appended (empty for a
	// repeat that changed nothing).
	Changed []string `json:"changed"`
}

// WebhookIgnored closes a webhook that was valid but had nothing to act on
// (no contact_id, no matching user, action test).
type WebhookIgnored struct {
	WebhookID string `json:"webhook_id"`
	Action    string `json:"action"`
	Reason    string `json:"reason"`
}

// WebhookFailed closes a webhook that could not be processed; nothing about
// the user changed.
type WebhookFailed struct {
	WebhookID string `json:"webhook_id"`
	Action    string `json:"action"`
	Reason    string `json:"reason"`
	// Status is the HTTP status the webhook was (or would have been) answered with.
	Status int `json:"status"`
}

// WebhookRetrying records a transient failure (CRM unreachable or 5xx);
// the webhook stays queued and is tried again at NextAttemptAt.
type WebhookRetrying struct {
	WebhookID     string    `json:"webhook_id"`
	Attempt       int       `json:"attempt"`
	Error         string    `json:"error"`
	NextAttemptAt time.Time `json:"next_attempt_at"`
}

// UserCreated records a new user for a contact.
type UserCreated struct {
	UserID    string    `json:"user_id"`
	ContactID ContactID `json:"contact_id"`
	Login     string    `json:"login"`
	Email     string    `json:"email"`
	Role      Role      `json:"role"`
	// PasswordHash is a bcrypt hash; the password itself is never recorded
	// in the clear (see PasswordIssued).
	PasswordHash string `json:"password_hash"`
	// WelcomeEmail asks for the welcome email (send_notification).
	WelcomeEmail bool `json:"welcome_email"`
}

// UserLinked records that a contact took over an existing user whose email
// it carries (add for a new contact whose email already has a user). The
// event carries the user as it was, so the contact's stream stands alone.
type UserLinked struct {
	UserID        string            `json:"user_id"`
	ContactID     ContactID         `json:"contact_id"`
	FromContactID ContactID         `json:"from_contact_id"`
	Login         string            `json:"login"`
	Email         string            `json:"email"`
	Role          Role              `json:"role"`
	PasswordHash  string            `json:"password_hash"`
	Meta          map[string]string `json:"meta"`
	Tags          []Tag             `json:"tags"`
	CreatedAt     time.Time         `json:"created_at"`
}

// UserUnlinked records that the contact's user moved to another contact.
type UserUnlinked struct {
	UserID      string    `json:"user_id"`
	ToContactID ContactID `json:"to_contact_id"`
}

// MetaChange is one field whose value changed.
type MetaChange struct {
	Key string `json:"key"`
	Old string `json:"old"`
	New string `json:"new"`
}

// MetaPulled records the user meta fields that changed when the contact's
// fields were pulled from the CRM, sorted by key.
type MetaPulled struct {
	Changes []MetaChange `json:"changes"`
}

// TagsUpdated records the user's complete new tag set (replaced, never
// merged) and what was added and removed. Lists are sorted by tag id.
type TagsUpdated struct {
	Tags    []Tag `json:"tags"`
	Added   []Tag `json:"added"`
	Removed []Tag `json:"removed"`
}

// RoleChanged records a role change asked for by a webhook.
type RoleChanged struct {
	Old Role `json:"old"`
	New Role `json:"new"`
}

// PasswordIssued records a generated password that must be returned to the
// CRM. Sealed is the password encrypted under KeyID, a key kept outside the
// event log and destroyed once the password is returned or given up.
type PasswordIssued struct {
	KeyID  string `json:"key_id"`
	Sealed []byte `json:"sealed"`
	// Field is the FunnelKit field that receives the password.
	Field string `json:"field"`
}

// PasswordReturned records that the CRM accepted the password; its key is
// destroyed afterwards.
type PasswordReturned struct {
	KeyID   string `json:"key_id"`
	Field   string `json:"field"`
	Attempt int    `json:"attempt"`
}

// PasswordReturnFailed records a failed return attempt. GaveUp marks the
// last one: the key is destroyed and the return is failed for good.
type PasswordReturnFailed struct {
	KeyID         string    `json:"key_id"`
	Field         string    `json:"field"`
	Attempt       int       `json:"attempt"`
	Error         string    `json:"error"`
	NextAttemptAt time.Time `json:"next_attempt_at,omitzero"`
	GaveUp        bool      `json:"gave_up"`
}

// PasswordReturnClaimed records that one node takes attempt Attempt of a
// password return, until Until. It is appended at the version of the
// contact's stream the node read, so of two nodes claiming at once one
// wins; only the winner writes to FunnelKit. A claim that no
// PasswordReturned or PasswordReturnFailed of its attempt closes by Until
// is expired: the attempt counts as made, and the next may be claimed.
type PasswordReturnClaimed struct {
	KeyID   string    `json:"key_id"`
	Field   string    `json:"field"`
	Attempt int       `json:"attempt"`
	Until   time.Time `json:"until"`
	// Node names the claiming node, the same across its restarts: a node
	// that finds its own claim live after a restart takes it over at once.
	Node string `json:"node,omitempty"`
}

// PasswordReplaced records a new password in place of one whose key only
// the issuing node holds, when that node showed no sign of life for the
// take-over delay: a new hash for the user, and the new password sealed
// under KeyID, a key of the replacing node. The old password is never
// returned; its key is shredded where it is. Appended at the version read.
type PasswordReplaced struct {
	OldKeyID string `json:"old_key_id"`
	KeyID    string `json:"key_id"`
	Sealed   []byte `json:"sealed"`
	Field    string `json:"field"`
	// PasswordHash is the bcrypt hash of the new password: the user's
	// password from now on.
	PasswordHash string `json:"password_hash"`
}

// WelcomeEmailClaimed records that one node sends attempt Attempt of the
// welcome email, until Until, with the Message-ID every attempt of this
// mail carries. Appended at the version read (see PasswordReturnClaimed).
type WelcomeEmailClaimed struct {
	To        string    `json:"to"`
	Attempt   int       `json:"attempt"`
	MessageID string    `json:"message_id"`
	Until     time.Time `json:"until"`
	// Node names the claiming node (see PasswordReturnClaimed).
	Node string `json:"node,omitempty"`
}

// WelcomeEmailSent records the welcome email (login and login link, never
// the password).
type WelcomeEmailSent struct {
	To        string `json:"to"`
	Transport string `json:"transport"`
	Attempt   int    `json:"attempt"`
}

// WelcomeEmailFailed records a failed attempt to send the welcome email.
type WelcomeEmailFailed struct {
	To            string    `json:"to"`
	Attempt       int       `json:"attempt"`
	Error         string    `json:"error"`
	NextAttemptAt time.Time `json:"next_attempt_at,omitzero"`
	GaveUp        bool      `json:"gave_up"`
}

// EmailReserved records, in an email's reservation stream, which contact's
// user owns the address.
type EmailReserved struct {
	Email     string    `json:"email"`
	ContactID ContactID `json:"contact_id"`
	UserID    string    `json:"user_id"`
}

// EmailReleased frees an address (the user's email changed).
type EmailReleased struct {
	Email     string    `json:"email"`
	ContactID ContactID `json:"contact_id"`
}

// LoginReserved records, in a login's reservation stream, which contact's
// user owns the login.
type LoginReserved struct {
	Login     string    `json:"login"`
	ContactID ContactID `json:"contact_id"`
	UserID    string    `json:"user_id"`
}

func (LoginReserved) EventType() string        { return TypeLoginReserved }
func (WebhookReceived) EventType() string      { return TypeWebhookReceived }
func (WebhookProcessed) EventType() string     { return TypeWebhookProcessed }
func (WebhookIgnored) EventType() string       { return TypeWebhookIgnored }
func (WebhookFailed) EventType() string        { return TypeWebhookFailed }
func (WebhookRetrying) EventType() string      { return TypeWebhookRetrying }
func (UserCreated) EventType() string          { return TypeUserCreated }
func (UserLinked) EventType() string           { return TypeUserLinked }
func (UserUnlinked) EventType() string         { return TypeUserUnlinked }
func (MetaPulled) EventType() string           { return TypeMetaPulled }
func (TagsUpdated) EventType() string          { return TypeTagsUpdated }
func (RoleChanged) EventType() string          { return TypeRoleChanged }
func (PasswordIssued) EventType() string       { return TypePasswordIssued }
func (PasswordReturned) EventType() string     { return TypePasswordReturned }
func (PasswordReturnFailed) EventType() string { return TypePasswordReturnFailed }
func (WelcomeEmailSent) EventType() string     { return TypeWelcomeEmailSent }
func (OperatorActed) EventType() string        { return TypeOperatorActed }
func (WelcomeEmailFailed) EventType() string   { return TypeWelcomeEmailFailed }
func (EmailReserved) EventType() string        { return TypeEmailReserved }
func (EmailReleased) EventType() string        { return TypeEmailReleased }

func (PasswordReturnClaimed) EventType() string { return TypePasswordReturnClaimed }
func (PasswordReplaced) EventType() string      { return TypePasswordReplaced }
func (WelcomeEmailClaimed) EventType() string   { return TypeWelcomeEmailClaimed }

// OperatorActed records an action an operator took in the console: what,
// on what, from which address and with which credential (its name, never
// the credential itself), and how it ended.
type OperatorActed struct {
	// Action is sign_in, rebuild, verify, parked_replay, parked_skip,
	// retry_password_return or retry_welcome_email.
	Action string `json:"action"`
	// Target names what the action touched, such as "welcome_email event
	// 12 (contact-1 version 1)"; empty for the whole views.
	Target string `json:"target,omitempty"`
	// Source is the address the request came from.
	Source string `json:"source"`
	// Credential names the credential used, such as "admin token".
	Credential string `json:"credential"`
	// Outcome is what came of it: started, done, the number of
	// differences, or the error.
	Outcome string `json:"outcome,omitempty"`
}
