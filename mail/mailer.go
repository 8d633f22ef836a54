package mail

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"strings"
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

// MessageID is the Message-ID SendWelcome gives the mail named key.
// usersync records it in the mail's claim (WelcomeEmailClaimed) and sends
// every attempt with it.
func (w *Mailer) MessageID(key string) string { return welcomeMessageID(key, w.from) }

// SendWelcome composes the welcome email for login and sends it to to.
// key names the mail: its Message-ID is made from it, so a mail sent again
// with the same key (after a crash before its record) is the same mail:
// the outbox replaces its file, and SMTP receivers can tell the repeat. A
// key that is itself a Message-ID (<left@right>, as MessageID makes and a
// claim records) is the mail's Message-ID as it is.
// It returns the transport used, "" when the mail could not be composed
// (a *FieldError). Send failures are *SendError as they are: their
// Temporary method tells whether to try again.
func (w *Mailer) SendWelcome(ctx context.Context, key, to, login string) (transport string, err error) {
	id := key
	if !isMessageID(key) {
		id = welcomeMessageID(key, w.from)
	}
	msg, err := Compose(w.from, Welcome{To: to, Login: login, LoginURL: w.loginURL}, time.Now(), id)
	if err != nil {
		return "", err
	}
	if o, ok := w.sender.(*Outbox); ok && key != "" {
		err = o.sendAs(ctx, messageFile(id), w.from, to, msg)
	} else {
		err = w.sender.Send(ctx, w.from, to, msg)
	}
	return w.sender.Transport(), err
}

// welcomeMessageID is the Message-ID of the welcome mail named key, "" (a
// random one) without a key.
func welcomeMessageID(key, from string) string {
	if key == "" {
		return ""
	}
	sum := sha256.Sum256([]byte("welcome\x00" + key))
	host := "usersync"
	if at := strings.LastIndexByte(from, '@'); at >= 0 && at < len(from)-1 {
		host = strings.Trim(from[at+1:], "<> ")
	}
	return "<welcome." + hex.EncodeToString(sum[:16]) + "@" + host + ">"
}

// isMessageID reports whether key has the form <left@right>.
func isMessageID(key string) bool {
	inner, ok := strings.CutPrefix(key, "<")
	if !ok {
		return false
	}
	inner, ok = strings.CutSuffix(inner, ">")
	at := strings.IndexByte(inner, '@')
	return ok && at > 0 && at < len(inner)-1
}

// messageFile is the outbox file name of a message with Message-ID id.
func messageFile(id string) string {
	sum := sha256.Sum256([]byte(id))
	return "welcome-" + hex.EncodeToString(sum[:16]) + ".eml"
}
