package mail

import (
	"context"
	"time"
)

// Config configures NewMailer.
type Config struct {
	// From is the sender address (--mail-from); it must parse.
	From string
	// LoginURL is the login link in the mail (--login-url); optional.
	LoginURL string
	// SMTPURL is the relay (--smtp-url). When empty, mails go to Outbox.
	SMTPURL string
	// Outbox is the directory for .eml files when SMTPURL is empty.
	Outbox string
	// Timeout bounds one SMTP session; DefaultTimeout when <= 0.
	Timeout time.Duration
}

// Mailer composes and sends the welcome email through the one Sender its
// Config picked. It is safe for concurrent use.
type Mailer struct {
	sender   Sender
	from     string
	loginURL string
}

// NewMailer checks cfg.From, fills in the defaults and picks the sender:
// SMTP when cfg.SMTPURL is set, else an Outbox in cfg.Outbox (created if
// needed). Its errors name the flag at fault (--mail-from, --smtp-url) and
// never hold the SMTP password.
func NewMailer(cfg Config) (*Mailer, error) {
	if _, err := ParseAddress("--mail-from", cfg.From); err != nil {
		return nil, err
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	sender, err := NewSender(cfg.SMTPURL, cfg.Outbox, cfg.Timeout)
	if err != nil {
		return nil, err
	}
	return &Mailer{sender: sender, from: cfg.From, loginURL: cfg.LoginURL}, nil
}

// Transport names the delivery: TransportSMTP or TransportOutbox.
func (w *Mailer) Transport() string { return w.sender.Transport() }

// SendWelcome composes the welcome email for login and sends it to to,
// once. It returns the transport used, "" when the mail could not be
// composed (a *FieldError). Send failures are *SendError as they are:
// their Temporary method tells whether to try again.
func (w *Mailer) SendWelcome(ctx context.Context, to, login string) (transport string, err error) {
	msg, err := Compose(w.from, Welcome{To: to, Login: login, LoginURL: w.loginURL}, time.Now(), "")
	if err != nil {
		return "", err
	}
	err = w.sender.Send(ctx, w.from, to, msg)
	return w.sender.Transport(), err
}
