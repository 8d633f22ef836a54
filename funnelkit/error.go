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
	// KindAuth: the site refused the credentials (401 or 403): a revoked
	// Application Password, a security plugin blocking Basic auth.
	// Temporary.
	KindAuth
	// KindNotFound: FunnelKit has no such contact (a WordPress 404 error).
	KindNotFound
	// KindServer: the site failed (5xx). Temporary.
	KindServer
	// KindClient: the site refused the request for another reason (other
	// 4xx, a redirect, a missing route), or the request could not be made.
	// Temporary for a redirect, a missing route, 408 and 429.
	KindClient
	// KindEmptyBody: an empty answer, usually a site without pretty
	// permalinks. Temporary.
	KindEmptyBody
	// KindHTML: an HTML page instead of JSON, usually a CDN or security
	// plugin challenge. Temporary.
	KindHTML
	// KindInvalidJSON: an answer that is not the JSON FunnelKit gives.
	// Temporary.
	KindInvalidJSON
	// KindWrongContact: FunnelKit answered with another contact than the
	// one asked for.
	KindWrongContact
)

var kindNames = [...]string{
	KindOK:           "ok",
	KindUnreachable:  "unreachable",
	KindAuth:         "auth",
	KindNotFound:     "not_found",
	KindServer:       "server",
	KindClient:       "client",
	KindEmptyBody:    "empty_body",
	KindHTML:         "html",
	KindInvalidJSON:  "invalid_json",
	KindWrongContact: "wrong_contact",
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

// Temporary says whether the failure is an outage of the site rather than
// an answer about the request, so that the caller keeps the work and tries
// again later: the site was unreachable, failed (5xx), asked to slow down
// (408, 429), or something in front of FunnelKit answered instead of it (a
// challenge or other HTML page, an empty or broken answer, refused
// credentials, a redirect, a missing route). Those last ones need the
// operator (an allow rule, a new Application Password, --funnelkit-url),
// not another request. Only answers about the request itself are not
// temporary: no such contact (KindNotFound), another contact's data
// (KindWrongContact), another 4xx refusal from WordPress, or a request that
// could not be made.
func (e *Error) Temporary() bool {
	switch e.Kind {
	case KindUnreachable, KindServer, KindAuth, KindEmptyBody, KindHTML, KindInvalidJSON:
		return true
	case KindClient:
		switch {
		case e.Status >= 300 && e.Status < 400: // a redirect: --funnelkit-url
		case e.Status == http.StatusNotFound: // no route: FunnelKit inactive
		case e.Status == http.StatusTooManyRequests, e.Status == http.StatusRequestTimeout:
		default:
			return false
		}
		return true
	}
	return false
}

// NotFound says whether FunnelKit answered that the contact does not exist.
func (e *Error) NotFound() bool { return e.Kind == KindNotFound }
