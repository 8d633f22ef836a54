package mail

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/textproto"
	"strings"
	"time"
)

// Sender delivers one composed message. Send tries once and does not retry;
// every failure is a *SendError. Implementations are safe for concurrent
// use.
type Sender interface {
	// Send delivers msg (as built by Compose) from from to to. Both are
	// addresses as Compose accepts them; only the bare address is used for
	// the envelope.
	Send(ctx context.Context, from string, to string, msg []byte) error
	// Transport names the delivery: "smtp" or "outbox".
	Transport() string
}

// Transport names.
const (
	TransportSMTP   = "smtp"
	TransportOutbox = "outbox"
)

// SendError is the error of every failed Send.
type SendError struct {
	// Transport is "smtp" or "outbox".
	Transport string
	// Op is the step that failed: "envelope", "dial", "tls", "greeting",
	// "ehlo", "starttls", "auth", "mail", "rcpt", "data", "write".
	Op string
	// Code is the SMTP reply code when the server answered with one, else 0.
	Code int
	// temporary is what Temporary reports.
	temporary bool
	// Err is the cause. It never holds the SMTP password.
	Err error
}

func (e *SendError) Error() string {
	kind := "permanent"
	if e.temporary {
		kind = "temporary"
	}
	op := ""
	if e.Op != "" {
		op = " " + e.Op
	}
	return fmt.Sprintf("mail: %s%s failed (%s): %v", e.Transport, op, kind, e.Err)
}

func (e *SendError) Unwrap() error { return e.Err }

// Temporary reports that trying again later may succeed: 4xx replies,
// network errors, timeouts and cancellations, file system errors. 5xx
// replies, bad addresses, refused TLS certificates and a relay that cannot
// authenticate are permanent. domain.Temporary sees it through errors.As.
func (e *SendError) Temporary() bool { return e.temporary }

// NewSender returns the SMTP sender for smtpURL when it is set, else an
// Outbox writing into outboxDir.
func NewSender(smtpURL, outboxDir string, timeout time.Duration) (Sender, error) {
	if smtpURL != "" {
		return NewSMTP(smtpURL, timeout)
	}
	return NewOutbox(outboxDir)
}

// envelope parses the envelope addresses of a Send.
func envelope(transport, from, to string) (string, string, error) {
	f, err := ParseAddress("from", from)
	if err != nil {
		return "", "", &SendError{Transport: transport, Op: "envelope", Err: err}
	}
	t, err := ParseAddress("to", to)
	if err != nil {
		return "", "", &SendError{Transport: transport, Op: "envelope", Err: err}
	}
	return f.Address, t.Address, nil
}

// classify tells whether an SMTP-side error is temporary and which reply
// code it carries.
func classify(err error) (temporary bool, code int) {
	var tp *textproto.Error
	if errors.As(err, &tp) {
		return tp.Code >= 400 && tp.Code < 500, tp.Code
	}
	var (
		cve *tls.CertificateVerificationError
		uae x509.UnknownAuthorityError
		he  x509.HostnameError
		cie x509.CertificateInvalidError
		rhe tls.RecordHeaderError
		pe  permanentError
	)
	switch {
	case errors.As(err, &cve), errors.As(err, &uae), errors.As(err, &he), errors.As(err, &cie):
		return false, 0 // the relay's certificate is refused: a configuration problem
	case errors.As(err, &rhe):
		return false, 0 // not TLS on the other side
	case errors.As(err, &pe):
		return false, 0
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return true, 0
	}
	// Network errors, timeouts, connection resets, EOF: the relay may be
	// back later.
	return true, 0
}

// permanentError marks a failure found on our side that retrying cannot fix.
type permanentError struct{ msg string }

func (e permanentError) Error() string { return e.msg }

// redactor removes a secret, in the forms it could be echoed in, from error
// text.
type redactor struct{ needles []string }

func (r redactor) text(s string) string {
	for _, n := range r.needles {
		if n != "" {
			s = strings.ReplaceAll(s, n, "xxxxx")
		}
	}
	return s
}

// err returns err unchanged when its text holds no secret, else a plain
// error with the secret replaced.
func (r redactor) err(err error) error {
	if err == nil {
		return nil
	}
	msg := err.Error()
	if clean := r.text(msg); clean != msg {
		return errors.New(clean)
	}
	return err
}
