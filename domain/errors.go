package domain

import "errors"

// Kinds of failure a webhook can end with. Callers branch on them with
// errors.Is; the http port maps each to the status of the webhook answer.
var (
	// ErrInvalidRequest: the webhook's parameters are wrong (an unknown
	// tag, a bad flag): the sender must change the automation.
	ErrInvalidRequest = errors.New("invalid webhook request")
	// ErrCRMRefused: the CRM answered, but not with what the webhook needs
	// (a missing contact, a malformed answer, another contact's data).
	ErrCRMRefused = errors.New("the CRM refused the request")
	// ErrImportFailed: the contact cannot become a user (no email, an
	// address that is not one, no free login).
	ErrImportFailed = errors.New("the user could not be imported")
	// ErrCRMUnavailable: the CRM could not be asked right now (down,
	// overloaded, too slow); the webhook is kept and tried again.
	ErrCRMUnavailable = errors.New("the CRM is unavailable")
)

// Failure is why a webhook failed for good: Reason is the message the
// webhook's outcome records, Kind one of the Err* kinds above.
type Failure struct {
	Kind   error
	Reason string
}

func (f *Failure) Error() string { return f.Reason }

// Unwrap makes errors.Is(f, f.Kind) true.
func (f *Failure) Unwrap() error { return f.Kind }

// Fail is a Failure of kind with reason.
func Fail(kind error, reason string) error { return &Failure{Kind: kind, Reason: reason} }

// Temporary reports whether err says to try again later: the CRM was
// unreachable or answered 5xx, a mail server answered 4xx. Adapters mark
// such errors with a Temporary() bool method.
func Temporary(err error) bool {
	var t interface{ Temporary() bool }
	return errors.As(err, &t) && t.Temporary()
}

// ErrStorageUnavailable marks a storage error that passes once the disk
// has room again or the file is free: the disk is full (SQLITE_FULL,
// ENOSPC, a quota) or the database is busy or locked. Whatever failed on
// it is tried again, never given up on (an event is not parked for it).
var ErrStorageUnavailable = errors.New("temporary storage error (disk full or database busy): it is tried again")
