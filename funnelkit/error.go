package funnelkit

import (
	"net/http"
	"strconv"
	"strings"
)

// Kind classifies a failed request by what the operator or the caller can do
// about it.
type Kind int

const (
	// KindOK is no failure; Config.Observe sees it for a successful request.
	KindOK Kind = iota
	// KindUnreachable: no answer (refused, reset, timed out, canceled).
	// Temporary.
	KindUnreachable
	// KindAuth: the site refused the credentials (401 or 403).
	KindAuth
	// KindNotFound: FunnelKit has no such contact (a WordPress 404 error).
	KindNotFound
	// KindServer: the site failed (5xx). Temporary.
	KindServer
	// KindClient: the site refused the request for another reason (other
	// 4xx, a redirect, a missing route).
	KindClient
	// KindEmptyBody: an empty answer, usually a site without pretty
	// permalinks.
	KindEmptyBody
	// KindHTML: an HTML page instead of JSON, usually a CDN or security
	// plugin challenge.
	KindHTML
	// KindInvalidJSON: an answer that is not the JSON FunnelKit gives.
	KindInvalidJSON
)

var kindNames = [...]string{
	KindOK:          "ok",
	KindUnreachable: "unreachable",
	KindAuth:        "auth",
	KindNotFound:    "not_found",
	KindServer:      "server",
	KindClient:      "client",
	KindEmptyBody:   "empty_body",
	KindHTML:        "html",
	KindInvalidJSON: "invalid_json",
}

// String is a short, stable name fit for a metric label ("not_found").
func (k Kind) String() string {
	if k >= 0 && int(k) < len(kindNames) {
		return kindNames[k]
	}
	return "kind(" + strconv.Itoa(int(k)) + ")"
}

// Error is every error a Client method returns. Use errors.As to get it.
type Error struct {
	// Op is the request, as "GET v3/contacts/12".
	Op string
	// Kind says what went wrong.
	Kind Kind
	// Status is the HTTP status of the answer, 0 when there was none.
	Status int
	// Message says what went wrong and what to fix. It never holds the
	// password.
	Message string

	err error
}

// Error reads as "funnelkit: GET v3/contacts/12: 404 Not Found: no such contact …".
func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString("funnelkit: ")
	b.WriteString(e.Op)
	b.WriteString(": ")
	if e.Status != 0 {
		b.WriteString(strconv.Itoa(e.Status))
		if t := http.StatusText(e.Status); t != "" {
			b.WriteString(" ")
			b.WriteString(t)
		}
		b.WriteString(": ")
	}
	b.WriteString(e.Message)
	return b.String()
}

// Unwrap gives the cause, when there is one (a network error,
// context.Canceled, context.DeadlineExceeded).
func (e *Error) Unwrap() error { return e.err }

// Temporary says whether trying again later may succeed: the site was
// unreachable, failed (5xx) or asked to slow down (429, 408).
func (e *Error) Temporary() bool {
	switch e.Kind {
	case KindUnreachable, KindServer:
		return true
	}
	return e.Status == http.StatusTooManyRequests || e.Status == http.StatusRequestTimeout
}

// NotFound says whether FunnelKit answered that the contact does not exist.
func (e *Error) NotFound() bool { return e.Kind == KindNotFound }
