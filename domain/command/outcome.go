package command

import (
	"errors"
	"time"

	"github.com/usersync/usersync/domain"
)

// Outcome statuses of a webhook.
const (
	StatusQueued    = "queued"
	StatusRetrying  = "retrying"
	StatusProcessed = "processed"
	StatusIgnored   = "ignored"
	StatusFailed    = "failed"
)

// Outcome is what processing a webhook ended with.
type Outcome struct {
	WebhookID string
	ContactID domain.ContactID
	Status    string
	Message   string
	UserID    string
	// Err says why: for a failed webhook a *domain.Failure (errors.Is
	// tells its kind, such as domain.ErrInvalidRequest), for a retrying
	// one an error matching domain.ErrCRMUnavailable; nil otherwise.
	Err error
	// Position is the global position of the last event appended.
	Position uint64
	// RetryAt is when a retrying webhook is tried again.
	RetryAt time.Time
}

// Success reports whether the webhook answer says success: true.
func (o Outcome) Success() bool { return o.Status == StatusProcessed }

// recordedStatus is the code a WebhookFailed event records for a failure
// of err's kind. The event format has always stored the HTTP status the
// answer had (400: the sender's mistake, 502: the CRM's, 500: an import
// that cannot be done); the http port maps the kinds to the same answers.
func recordedStatus(err error) int {
	switch {
	case errors.Is(err, domain.ErrInvalidRequest):
		return 400
	case errors.Is(err, domain.ErrCRMRefused):
		return 502
	default:
		return 500
	}
}
