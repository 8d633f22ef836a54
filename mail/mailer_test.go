package mail

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/usersync/usersync/domain"
	"github.com/usersync/usersync/mail/smtptest"
)

const testLoginURL = "https://shop.example.com/wp-login.php"

func TestNewMailerConfig(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "outbox")
	tests := []struct {
		name          string
		cfg           Config
		wantTransport string
		wantTimeout   time.Duration // SMTP only
		wantErr       string        // exact text
	}{
		{name: "outbox", cfg: Config{From: testFrom, Outbox: dir}, wantTransport: "outbox"},
		{name: "smtp, default timeout", cfg: Config{From: testFrom, SMTPURL: "smtp://mail.example.com", Outbox: dir}, wantTransport: "smtp", wantTimeout: DefaultTimeout},
		{name: "smtp, own timeout", cfg: Config{From: testFrom, SMTPURL: "smtp://mail.example.com", Timeout: time.Second}, wantTransport: "smtp", wantTimeout: time.Second},
		{name: "bad from", cfg: Config{From: "not an address", Outbox: dir}, wantErr: "mail: invalid --mail-from: not an email address (no angle-addr)"},
		{name: "empty from", cfg: Config{Outbox: dir}, wantErr: "mail: invalid --mail-from: empty"},
		{name: "from with a header", cfg: Config{From: "a@example.com\r\nBcc: x@example.com", Outbox: dir}, wantErr: "mail: invalid --mail-from: contains CR or LF"},
		{name: "bad SMTP URL, no password in the error", cfg: Config{From: testFrom, SMTPURL: "ftp://alice:" + testPass + "@mail.example.com"}, wantErr: "--smtp-url: scheme must be smtp or smtps"},
		{name: "no outbox directory", cfg: Config{From: testFrom}, wantErr: "mail: outbox directory is empty"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w, err := NewMailer(tt.cfg)
			if tt.wantErr != "" {
				if err == nil || err.Error() != tt.wantErr {
					t.Fatalf("NewMailer = %v, %v; want error %q", w, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := w.Transport(); got != tt.wantTransport {
				t.Errorf("Transport = %q, want %q", got, tt.wantTransport)
			}
			if s, ok := w.sender.(*SMTP); ok && s.timeout != tt.wantTimeout {
				t.Errorf("timeout = %v, want %v", s.timeout, tt.wantTimeout)
			}
		})
	}
}

func TestMailerOutbox(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data", "outbox")
	w, err := NewMailer(Config{From: testFrom, LoginURL: testLoginURL, Outbox: dir})
	if err != nil {
		t.Fatal(err)
	}
	transport, err := w.SendWelcome(context.Background(), "user-1", testRcpt, "jane")
	if err != nil || transport != "outbox" {
		t.Fatalf("SendWelcome = %q, %v", transport, err)
	}
	files, err := filepath.Glob(filepath.Join(dir, "*.eml"))
	if err != nil || len(files) != 1 {
		t.Fatalf("outbox files = %v, %v", files, err)
	}
	raw, err := os.ReadFile(files[0])
	if err != nil {
		t.Fatal(err)
	}
	p := parse(t, raw)
	if p.header.Get("To") != testRcpt || p.header.Get("From") != `"Shop" <noreply@shop.example.com>` {
		t.Errorf("headers: %v", p.header)
	}
	if !strings.Contains(p.body, "jane") || !strings.Contains(p.body, testLoginURL) {
		t.Errorf("body lacks the login or the link:\n%s", p.body)
	}

	// The same mail again (a crash came between the send and its record)
	// replaces its file: the outbox still holds it once, under one
	// Message-ID; another user's mail is another file.
	if _, err := w.SendWelcome(context.Background(), "user-1", testRcpt, "jane"); err != nil {
		t.Fatal(err)
	}
	if again, _ := filepath.Glob(filepath.Join(dir, "*.eml")); len(again) != 1 || again[0] != files[0] {
		t.Fatalf("after sending again: outbox files = %v, want %v", again, files)
	}
	raw2, err := os.ReadFile(files[0])
	if err != nil {
		t.Fatal(err)
	}
	if id := parse(t, raw2).header.Get("Message-Id"); id == "" || id != p.header.Get("Message-Id") {
		t.Errorf("Message-ID %q then %q, want one stable id", p.header.Get("Message-Id"), id)
	}
	if _, err := w.SendWelcome(context.Background(), "user-3", testRcpt, "joe"); err != nil {
		t.Fatal(err)
	}
	if both, _ := filepath.Glob(filepath.Join(dir, "*.eml")); len(both) != 2 {
		t.Errorf("another user's mail: outbox files = %v, want 2", both)
	}

	// A mail that cannot be composed names no transport and is permanent.
	transport, err = w.SendWelcome(context.Background(), "user-2", testRcpt, " ")
	var fe *FieldError
	if transport != "" || !errors.As(err, &fe) || fe.Field != "Login" || domain.Temporary(err) {
		t.Errorf("empty login: SendWelcome = %q, %v", transport, err)
	}
}

func TestMailerSMTP(t *testing.T) {
	srv := startServer(t, smtptest.WithAuth("alice", testPass))
	srv.FailNext(1, 451)
	srv.FailNext(1, 550)
	w, err := NewMailer(Config{From: testFrom, LoginURL: testLoginURL, SMTPURL: "smtp://alice:" + testPass + "@" + srv.Addr(), Timeout: shortWait})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name      string
		wantErr   bool
		temporary bool
		code      int
	}{
		{name: "451 is temporary", wantErr: true, temporary: true, code: 451},
		{name: "550 is permanent", wantErr: true, code: 550},
		{name: "accepted"},
	}
	for _, tt := range tests {
		transport, err := w.SendWelcome(context.Background(), "user-1", "Jane <"+testRcpt+">", "jane")
		if transport != "smtp" {
			t.Errorf("%s: transport = %q", tt.name, transport)
		}
		if !tt.wantErr {
			if err != nil {
				t.Fatalf("%s: %v", tt.name, err)
			}
			continue
		}
		se := assertSendError(t, err, "mail", tt.temporary, tt.code)
		if domain.Temporary(err) != tt.temporary {
			t.Errorf("%s: domain.Temporary = %v (%v)", tt.name, !tt.temporary, se)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), shortWait)
	defer cancel()
	msgs, err := srv.WaitFor(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	m := msgs[0]
	if m.From != "noreply@shop.example.com" || len(m.To) != 1 || m.To[0] != testRcpt || m.User != "alice" {
		t.Errorf("envelope = %q -> %q as %q", m.From, m.To, m.User)
	}
	p := parse(t, m.Data)
	if p.header.Get("To") != `"Jane" <`+testRcpt+`>` || !strings.Contains(p.body, testLoginURL) {
		t.Errorf("message: %v\n%s", p.header, p.body)
	}
	assertNoSecret(t, "message", string(m.Data))
}

func TestMailerSMTP_AMessageIDKeyIsTheMessageID(t *testing.T) {
	// Given a mailer on an SMTP relay, and the Message-ID a claim recorded
	srv := startServer(t, smtptest.WithAuth("alice", testPass))
	w, err := NewMailer(Config{From: testFrom, SMTPURL: "smtp://alice:" + testPass + "@" + srv.Addr(), Timeout: shortWait})
	if err != nil {
		t.Fatal(err)
	}
	id := w.MessageID("user-1")
	if id != welcomeMessageID("user-1", testFrom) {
		t.Fatalf("MessageID = %q, want the one SendWelcome makes from the key", id)
	}

	// When the mail is sent twice with it (a resend after a crash), and
	// once with the plain key
	for _, key := range []string{id, id, "user-1"} {
		if _, err := w.SendWelcome(context.Background(), key, testRcpt, "jane"); err != nil {
			t.Fatal(err)
		}
	}

	// Then the relay got three messages with that one Message-ID
	ctx, cancel := context.WithTimeout(context.Background(), shortWait)
	defer cancel()
	msgs, err := srv.WaitFor(ctx, 3)
	if err != nil {
		t.Fatal(err)
	}
	for i, m := range msgs {
		if got := parse(t, m.Data).header.Get("Message-ID"); got != id {
			t.Errorf("message %d: Message-ID %q, want %q", i, got, id)
		}
	}
}
