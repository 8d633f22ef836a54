package smtptest

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"net/smtp"
	"net/textproto"
	"strings"
	"testing"
	"time"
)

func start(t *testing.T, opts ...Option) *Server {
	t.Helper()
	s, err := Start(opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func dial(t *testing.T, s *Server) *textproto.Conn {
	t.Helper()
	c, err := textproto.Dial("tcp", s.Addr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	expect(t, c, "", 220)
	return c
}

// expect sends line (unless empty) and checks the reply code.
func expect(t *testing.T, c *textproto.Conn, line string, code int) string {
	t.Helper()
	if line != "" {
		if err := c.PrintfLine("%s", line); err != nil {
			t.Fatal(err)
		}
	}
	got, msg, err := c.ReadResponse(0)
	if got != code {
		t.Fatalf("%q: reply %d %q (%v), want %d", line, got, msg, err, code)
	}
	return msg
}

// data sends raw, already dot-stuffed message text and the final dot after
// a 354, and checks the reply code.
func data(t *testing.T, c *textproto.Conn, raw string, code int) {
	t.Helper()
	expect(t, c, "DATA", 354)
	if _, err := fmt.Fprint(c.W, raw+".\r\n"); err != nil {
		t.Fatal(err)
	}
	if err := c.W.Flush(); err != nil {
		t.Fatal(err)
	}
	expect(t, c, "", code)
}

func plain(user, pass string) string {
	return base64.StdEncoding.EncodeToString([]byte("\x00" + user + "\x00" + pass))
}

func TestSession(t *testing.T) {
	s := start(t)
	c := dial(t, s)
	expect(t, c, "MAIL FROM:<a@example.com>", 502) // before EHLO
	ehlo := expect(t, c, "EHLO client.example", 250)
	for _, want := range []string{"AUTH PLAIN", "8BITMIME", "SIZE"} {
		if !strings.Contains(ehlo, want) {
			t.Errorf("EHLO reply lacks %s: %q", want, ehlo)
		}
	}
	if strings.Contains(ehlo, "STARTTLS") {
		t.Error("STARTTLS advertised without a certificate")
	}
	expect(t, c, "RCPT TO:<b@example.com>", 502) // before MAIL
	expect(t, c, "MAIL FROM:<a@example.com> BODY=8BITMIME", 250)
	expect(t, c, "RCPT TO:<b@example.com>", 250)
	expect(t, c, "RSET", 250)
	expect(t, c, "DATA", 502) // RSET forgot the transaction
	expect(t, c, "MAIL FROM:<>", 250)
	expect(t, c, "RCPT TO:<b@example.com>", 250)
	expect(t, c, "RCPT TO:<c@example.com>", 250)
	// Dot-stuffed data: ".." lines lose one dot.
	data(t, c, "Subject: x\r\n\r\n..\r\n...dots\r\nend\r\n", 250)
	expect(t, c, "QUIT", 221)

	msgs := s.Messages()
	if len(msgs) != 1 {
		t.Fatalf("%d messages", len(msgs))
	}
	m := msgs[0]
	if m.From != "" || strings.Join(m.To, ",") != "b@example.com,c@example.com" || m.User != "" || m.TLS {
		t.Errorf("message = %+v", m)
	}
	if want := "Subject: x\r\n\r\n.\r\n..dots\r\nend\r\n"; string(m.Data) != want {
		t.Errorf("data = %q, want %q", m.Data, want)
	}
	// Messages returns copies.
	msgs[0].Data[0] = 'X'
	msgs[0].To[0] = "x"
	if m := s.Messages()[0]; m.Data[0] != 'S' || m.To[0] != "b@example.com" {
		t.Error("Messages shares memory with the server")
	}
}

func TestAuth(t *testing.T) {
	s := start(t, WithAuth("alice", "secret"))
	c := dial(t, s)
	expect(t, c, "EHLO client", 250)
	expect(t, c, "MAIL FROM:<a@example.com>", 530)
	expect(t, c, "AUTH LOGIN", 504)
	expect(t, c, "AUTH PLAIN "+plain("alice", "wrong"), 535)
	expect(t, c, "AUTH PLAIN "+plain("bob", "secret"), 535)
	expect(t, c, "AUTH PLAIN", 334) // continuation
	expect(t, c, "*", 501)
	expect(t, c, "AUTH PLAIN", 334)
	expect(t, c, plain("alice", "secret"), 235)
	expect(t, c, "AUTH PLAIN "+plain("alice", "secret"), 503) // twice
	expect(t, c, "MAIL FROM:<a@example.com>", 250)
	expect(t, c, "RCPT TO:<b@example.com>", 250)
	data(t, c, "hi\r\n", 250)
	if m := s.Messages(); len(m) != 1 || m[0].User != "alice" {
		t.Errorf("messages = %+v", m)
	}

	// Without WithAuth any credentials do, and AUTH is optional.
	a := start(t)
	c = dial(t, a)
	expect(t, c, "EHLO client", 250)
	expect(t, c, "AUTH PLAIN "+plain("anyone", "anything"), 235)
	expect(t, c, "MAIL FROM:<a@example.com>", 250)

	n := start(t, WithoutAuth())
	c = dial(t, n)
	if ehlo := expect(t, c, "EHLO client", 250); strings.Contains(ehlo, "AUTH") {
		t.Errorf("AUTH advertised: %q", ehlo)
	}
	expect(t, c, "AUTH PLAIN "+plain("a", "b"), 502)
}

// TestTLS sends through net/smtp over STARTTLS and implicit TLS.
func TestTLS(t *testing.T) {
	serverTLS, roots, err := SelfSigned()
	if err != nil {
		t.Fatal(err)
	}
	clientTLS := &tls.Config{RootCAs: roots, ServerName: "127.0.0.1"}
	tests := []struct {
		name     string
		opt      Option
		implicit bool
	}{
		{name: "STARTTLS", opt: WithSTARTTLS(serverTLS)},
		{name: "implicit TLS", opt: WithImplicitTLS(serverTLS), implicit: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := start(t, tt.opt, WithAuth("alice", "secret"))
			var c *smtp.Client
			if tt.implicit {
				conn, err := tls.Dial("tcp", s.Addr(), clientTLS)
				if err != nil {
					t.Fatal(err)
				}
				if c, err = smtp.NewClient(conn, "127.0.0.1"); err != nil {
					t.Fatal(err)
				}
			} else {
				if c, err = smtp.Dial(s.Addr()); err != nil {
					t.Fatal(err)
				}
			}
			defer c.Close()
			ok, _ := c.Extension("STARTTLS")
			if ok == tt.implicit {
				t.Errorf("STARTTLS advertised = %v", ok)
			}
			if !tt.implicit {
				if err := c.StartTLS(clientTLS); err != nil {
					t.Fatal(err)
				}
			}
			send(t, c, smtp.PlainAuth("", "alice", "secret", "127.0.0.1"), "tls\r\n")
			if m := s.Messages(); len(m) != 1 || !m[0].TLS || m[0].User != "alice" {
				t.Errorf("messages = %+v", m)
			}
		})
	}
}

// send authenticates with auth and sends body from a@example.com to
// b@example.com.
func send(t *testing.T, c *smtp.Client, auth smtp.Auth, body string) {
	t.Helper()
	if err := c.Auth(auth); err != nil {
		t.Fatal(err)
	}
	if err := c.Mail("a@example.com"); err != nil {
		t.Fatal(err)
	}
	if err := c.Rcpt("b@example.com"); err != nil {
		t.Fatal(err)
	}
	w, err := c.Data()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := fmt.Fprint(w, body); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if err := c.Quit(); err != nil {
		t.Fatal(err)
	}
}

func TestSelfSigned(t *testing.T) {
	cfg, roots, err := SelfSigned()
	if err != nil {
		t.Fatal(err)
	}
	leaf := cfg.Certificates[0].Leaf
	for _, name := range []string{"localhost", "127.0.0.1", "::1"} {
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, DNSName: name}); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, DNSName: "example.com"}); err == nil {
		t.Error("the certificate is valid for example.com")
	}
}

func TestFaultInjection(t *testing.T) {
	s := start(t)
	s.FailNext(2, 451)
	s.FailNextData(1, 554)
	s.FailNextData(1, 299) // not a 4xx or 5xx: still sent as is
	c := dial(t, s)
	expect(t, c, "EHLO client", 250)
	expect(t, c, "MAIL FROM:<a@example.com>", 451)
	expect(t, c, "MAIL FROM:<a@example.com>", 451)
	expect(t, c, "MAIL FROM:<a@example.com>", 250)
	expect(t, c, "RCPT TO:<b@example.com>", 250)
	data(t, c, "one\r\n", 554)
	expect(t, c, "MAIL FROM:<a@example.com>", 250)
	expect(t, c, "RCPT TO:<b@example.com>", 250)
	data(t, c, "two\r\n", 299)
	expect(t, c, "MAIL FROM:<a@example.com>", 250)
	expect(t, c, "RCPT TO:<b@example.com>", 250)
	data(t, c, "three\r\n", 250)
	if m := s.Messages(); len(m) != 1 || string(m[0].Data) != "three\r\n" {
		t.Errorf("messages = %+v", m)
	}
}

func TestLimits(t *testing.T) {
	s := start(t, WithMaxMessageSize(20))
	c := dial(t, s)
	expect(t, c, "EHLO client", 250)
	expect(t, c, "MAIL FROM:<a@example.com>", 250)
	expect(t, c, "RCPT TO:<b@example.com>", 250)
	data(t, c, strings.Repeat("0123456789\r\n", 5), 552)
	expect(t, c, "NOOP", 250) // the session goes on

	expect(t, c, strings.Repeat("N", MaxLineLength+10), 500)
	if _, _, err := c.ReadResponse(0); err == nil {
		t.Error("connection still open after an over-long line")
	}
	if n := len(s.Messages()); n != 0 {
		t.Errorf("%d messages", n)
	}
}

func TestWaitFor(t *testing.T) {
	s := start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := s.WaitFor(ctx, 1); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("WaitFor on an empty server = %v", err)
	}

	got := make(chan error, 1)
	go func() {
		_, err := s.WaitFor(context.Background(), 2)
		got <- err
	}()
	c := dial(t, s)
	expect(t, c, "EHLO client", 250)
	for range 2 {
		expect(t, c, "MAIL FROM:<a@example.com>", 250)
		expect(t, c, "RCPT TO:<b@example.com>", 250)
		data(t, c, "x\r\n", 250)
	}
	if err := <-got; err != nil {
		t.Fatal(err)
	}

	// Close wakes waiters and is idempotent.
	go func() {
		_, err := s.WaitFor(context.Background(), 10)
		got <- err
	}()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-got; err == nil {
		t.Error("WaitFor returned nil after Close")
	}
	if err := s.Close(); err != nil {
		t.Errorf("second Close = %v", err)
	}
}

func TestCloseWithOpenConnection(t *testing.T) {
	s, err := Start()
	if err != nil {
		t.Fatal(err)
	}
	c, err := textproto.Dial("tcp", s.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, _, err := c.ReadResponse(220); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil { // must not hang on the idle session
		t.Fatal(err)
	}
	if _, _, err := c.ReadResponse(0); err == nil {
		t.Error("session still answering after Close")
	}
}

func TestCloseRightAfterStart(t *testing.T) {
	for range 20 {
		s, err := Start()
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Close(); err != nil { // must not hang before Serve runs
			t.Fatal(err)
		}
	}
}
