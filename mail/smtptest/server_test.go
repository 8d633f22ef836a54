package smtptest

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
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

func TestSession(t *testing.T) {
	s := start(t)
	c := dial(t, s)
	expect(t, c, "MAIL FROM:<a@example.com>", 503) // before EHLO
	ehlo := expect(t, c, "EHLO client.example", 250)
	for _, want := range []string{"AUTH PLAIN", "8BITMIME", "SIZE"} {
		if !strings.Contains(ehlo, want) {
			t.Errorf("EHLO reply lacks %s: %q", want, ehlo)
		}
	}
	if strings.Contains(ehlo, "STARTTLS") {
		t.Error("STARTTLS advertised without a certificate")
	}
	expect(t, c, "NOOP", 250)
	expect(t, c, "RCPT TO:<b@example.com>", 503) // before MAIL
	expect(t, c, "DATA", 503)
	expect(t, c, "MAIL FROM:<a@example.com> BODY=8BITMIME", 250)
	expect(t, c, "MAIL FROM:<a@example.com>", 503) // nested
	expect(t, c, "RCPT TO:<b@example.com>", 250)
	expect(t, c, "RSET", 250)
	expect(t, c, "DATA", 503) // RSET forgot the transaction
	expect(t, c, "MAIL FROM:<>", 250)
	expect(t, c, "RCPT TO:<b@example.com>", 250)
	expect(t, c, "RCPT TO:<c@example.com>", 250)
	expect(t, c, "DATA", 354)
	// Raw dot-stuffed data: ".." lines lose one dot.
	if _, err := fmt.Fprint(c.W, "Subject: x\r\n\r\n..\r\n...dots\r\nend\r\n.\r\n"); err != nil {
		t.Fatal(err)
	}
	c.W.Flush()
	expect(t, c, "", 250)
	expect(t, c, "HELO other.example", 250)
	expect(t, c, "BOGUS", 500)
	expect(t, c, "VRFY a", 252)
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
	if s.Messages()[0].Data[0] != 'S' {
		t.Error("Messages shares memory with the server")
	}
}

func TestAuth(t *testing.T) {
	s := start(t, WithAuth("alice", "secret"))
	plain := func(user, pass string) string {
		return base64.StdEncoding.EncodeToString([]byte("\x00" + user + "\x00" + pass))
	}
	c := dial(t, s)
	expect(t, c, "AUTH PLAIN "+plain("alice", "secret"), 503) // before EHLO
	expect(t, c, "EHLO client", 250)
	expect(t, c, "MAIL FROM:<a@example.com>", 530)
	expect(t, c, "AUTH LOGIN", 504)
	expect(t, c, "AUTH PLAIN "+plain("alice", "wrong"), 535)
	expect(t, c, "AUTH PLAIN !!!", 501)
	expect(t, c, "AUTH PLAIN", 334) // continuation
	expect(t, c, "*", 501)
	expect(t, c, "AUTH PLAIN", 334)
	expect(t, c, plain("alice", "secret"), 235)
	expect(t, c, "AUTH PLAIN "+plain("alice", "secret"), 503) // twice
	expect(t, c, "MAIL FROM:<a@example.com>", 250)
	expect(t, c, "RCPT TO:<b@example.com>", 250)
	expect(t, c, "DATA", 354)
	fmt.Fprint(c.W, "hi\r\n.\r\n")
	c.W.Flush()
	expect(t, c, "", 250)
	if m := s.Messages(); len(m) != 1 || m[0].User != "alice" {
		t.Errorf("messages = %+v", m)
	}

	n := start(t, WithoutAuth())
	c = dial(t, n)
	if ehlo := expect(t, c, "EHLO client", 250); strings.Contains(ehlo, "AUTH") {
		t.Errorf("AUTH advertised: %q", ehlo)
	}
	expect(t, c, "AUTH PLAIN "+plain("a", "b"), 502)
}

func TestFaultInjection(t *testing.T) {
	s := start(t)
	s.FailNext(2, 451)
	s.FailNextData(1, 554)
	c := dial(t, s)
	expect(t, c, "EHLO client", 250)
	expect(t, c, "MAIL FROM:<a@example.com>", 451)
	expect(t, c, "MAIL FROM:<a@example.com>", 451)
	expect(t, c, "MAIL FROM:<a@example.com>", 250)
	expect(t, c, "RCPT TO:<b@example.com>", 250)
	expect(t, c, "DATA", 354)
	fmt.Fprint(c.W, "one\r\n.\r\n")
	c.W.Flush()
	expect(t, c, "", 554)
	expect(t, c, "MAIL FROM:<a@example.com>", 250)
	expect(t, c, "RCPT TO:<b@example.com>", 250)
	expect(t, c, "DATA", 354)
	fmt.Fprint(c.W, "two\r\n.\r\n")
	c.W.Flush()
	expect(t, c, "", 250)
	if m := s.Messages(); len(m) != 1 || string(m[0].Data) != "two\r\n" {
		t.Errorf("messages = %+v", m)
	}
}

func TestLimits(t *testing.T) {
	s := start(t, WithMaxMessageSize(20))
	c := dial(t, s)
	expect(t, c, "EHLO client", 250)
	expect(t, c, "MAIL FROM:<a@example.com>", 250)
	expect(t, c, "RCPT TO:<b@example.com>", 250)
	expect(t, c, "DATA", 354)
	fmt.Fprint(c.W, strings.Repeat("0123456789\r\n", 5)+".\r\n")
	c.W.Flush()
	expect(t, c, "", 552)
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
		expect(t, c, "DATA", 354)
		fmt.Fprint(c.W, "x\r\n.\r\n")
		c.W.Flush()
		expect(t, c, "", 250)
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
