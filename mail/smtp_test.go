package mail

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/usersync/usersync/domain"
	"github.com/usersync/usersync/mail/smtptest"
)

const (
	testPass  = "hunter2-S3cret"
	testFrom  = "Shop <noreply@shop.example.com>"
	testRcpt  = "jane@example.org"
	shortWait = 5 * time.Second
)

func startServer(t *testing.T, opts ...smtptest.Option) *smtptest.Server {
	t.Helper()
	srv, err := smtptest.Start(opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Close() })
	return srv
}

func testMessage(t *testing.T) []byte {
	t.Helper()
	msg, err := Compose(testFrom, Welcome{To: testRcpt, Login: "jane", LoginURL: "https://shop.example.com/wp-login.php", SiteName: "Shop"}, testNow, "t1@shop.example.com")
	if err != nil {
		t.Fatal(err)
	}
	return msg
}

// secretForms are the ways the password could leak into text.
func secretForms(user, pass string) []string {
	return []string{
		pass,
		base64.StdEncoding.EncodeToString([]byte("\x00" + user + "\x00" + pass)),
		base64.StdEncoding.EncodeToString([]byte(pass)),
	}
}

func assertNoSecret(t *testing.T, what, text string) {
	t.Helper()
	for _, s := range secretForms("alice", testPass) {
		if strings.Contains(text, s) {
			t.Errorf("%s leaks the password (%q): %s", what, s, text)
		}
	}
}

func assertSendError(t *testing.T, err error, op string, temporary bool, code int) *SendError {
	t.Helper()
	var se *SendError
	if !errors.As(err, &se) {
		t.Fatalf("err = %v (%T), want *SendError", err, err)
	}
	if se.Op != op || se.Temporary() != temporary || se.Code != code || se.Transport != "smtp" {
		t.Errorf("got Op=%q Temporary=%v Code=%d Transport=%q, want Op=%q Temporary=%v Code=%d: %v",
			se.Op, se.Temporary(), se.Code, se.Transport, op, temporary, code, err)
	}
	if domain.Temporary(err) != temporary {
		t.Errorf("domain.Temporary = %v", !temporary)
	}
	assertNoSecret(t, "error", err.Error())
	assertNoSecret(t, "error %+v", fmt.Sprintf("%+v", err))
	assertNoSecret(t, "error %#v", fmt.Sprintf("%#v", err))
	return se
}

func TestParseSMTPURL(t *testing.T) {
	tests := []struct {
		url      string
		wantAddr string
		wantUser string
		wantPass string
		wantTLS  bool
		wantSkip bool
		wantStr  string
		wantErr  string
	}{
		{url: "smtp://mail.example.com", wantAddr: "mail.example.com:25", wantStr: "smtp://mail.example.com:25"},
		{url: "smtp://mail.example.com:587/", wantAddr: "mail.example.com:587"},
		{url: "SMTP://mail.example.com:2525", wantAddr: "mail.example.com:2525"},
		{url: "smtps://mail.example.com", wantAddr: "mail.example.com:465", wantTLS: true, wantStr: "smtps://mail.example.com:465"},
		{url: "smtp://alice:" + testPass + "@mail.example.com:587", wantAddr: "mail.example.com:587", wantUser: "alice", wantPass: testPass, wantStr: "smtp://alice:xxxxx@mail.example.com:587"},
		{url: "smtp://alice%40example.com:p%40ss%3Aw%2Fd@mail.example.com", wantAddr: "mail.example.com:25", wantUser: "alice@example.com", wantPass: "p@ss:w/d"},
		{url: "smtp://alice:p@ss@mail.example.com", wantAddr: "mail.example.com:25", wantUser: "alice", wantPass: "p@ss"},
		{url: "smtp://alice@mail.example.com", wantAddr: "mail.example.com:25", wantUser: "alice", wantStr: "smtp://alice@mail.example.com:25"},
		{url: "smtp://[::1]:25", wantAddr: "[::1]:25"},
		{url: "smtp://127.0.0.1:25?skip_verify=true", wantAddr: "127.0.0.1:25", wantSkip: true, wantStr: "smtp://127.0.0.1:25?skip_verify=true"},

		{url: "mail.example.com:25", wantErr: "want smtp://"},
		{url: "http://mail.example.com", wantErr: "scheme must be smtp or smtps"},
		{url: "ftp://alice:" + testPass + "@mail.example.com", wantErr: "scheme must be smtp or smtps"},
		{url: "smtp://", wantErr: "missing host"},
		{url: "smtp://alice:" + testPass + "@", wantErr: "missing host"},
		{url: "smtp://alice:" + testPass + "@:25", wantErr: "missing host"},
		{url: "smtp://alice:" + testPass + "@mail.example.com:0", wantErr: "port must be"},
		{url: "smtp://alice:" + testPass + "@mail.example.com:65536", wantErr: "port must be"},
		{url: "smtp://alice:" + testPass + "@mail.example.com:abc", wantErr: "port must be"},
		{url: "smtp://alice:" + testPass + "@mail.example.com:", wantErr: "port must be"},
		{url: "smtp://alice:" + testPass + "%zz@mail.example.com", wantErr: "percent-encoding"},
		{url: "smtp://:" + testPass + "@mail.example.com", wantErr: "user is empty"},
		{url: "smtp://alice:" + testPass + "@mail.example.com/inbox", wantErr: "path not allowed"},
		{url: "smtp://alice:" + testPass + "@mail.example.com?tls=off", wantErr: "unknown option"},
		{url: "smtp://alice:" + testPass + "@mail.example.com?skip_verify=maybe", wantErr: "skip_verify must be"},
		{url: "smtp://alice:" + testPass + "@mail.example.com#x", wantErr: "fragment"},
		{url: "smtp://alice:" + testPass + "@mail example.com", wantErr: "bad host"},
	}
	for _, tt := range tests {
		t.Run(tt.url, func(t *testing.T) {
			s, err := NewSMTP(tt.url, 0)
			if tt.wantErr != "" {
				if err == nil {
					t.Fatalf("NewSMTP = %v, want error %q", s, tt.wantErr)
				}
				if !strings.Contains(err.Error(), tt.wantErr) || !strings.HasPrefix(err.Error(), "--smtp-url: ") {
					t.Errorf("err = %q, want it to contain %q", err, tt.wantErr)
				}
				assertNoSecret(t, "error", err.Error())
				if strings.Contains(err.Error(), "%zz") {
					t.Errorf("error quotes the password's bytes: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if s.Addr() != tt.wantAddr || s.user != tt.wantUser || s.pass.s != tt.wantPass || s.implicitTLS != tt.wantTLS || s.InsecureSkipVerify != tt.wantSkip {
				t.Errorf("got addr=%q user=%q pass=%q tls=%v skip=%v", s.Addr(), s.user, s.pass.s, s.implicitTLS, s.InsecureSkipVerify)
			}
			if tt.wantStr != "" && s.String() != tt.wantStr {
				t.Errorf("String = %q, want %q", s.String(), tt.wantStr)
			}
			if s.Transport() != "smtp" || s.timeout != DefaultTimeout {
				t.Errorf("Transport = %q, timeout = %v", s.Transport(), s.timeout)
			}
		})
	}
}

func TestSMTPPrintingRedactsPassword(t *testing.T) {
	s, err := NewSMTP("smtp://alice:"+testPass+"@mail.example.com:587", time.Second)
	if err != nil {
		t.Fatal(err)
	}
	holder := struct {
		S     *SMTP
		inner *SMTP
		Val   SMTP
	}{s, s, *s}
	var logs bytes.Buffer
	slog.New(slog.NewTextHandler(&logs, nil)).Info("configured", "sender", s)
	slog.New(slog.NewJSONHandler(&logs, nil)).Info("configured", "sender", s)
	for _, out := range []string{
		s.String(), fmt.Sprint(s), fmt.Sprintf("%v %+v %#v %s %q", s, s, s, s, s),
		fmt.Sprintf("%v %+v %#v", holder, holder, holder), logs.String(),
	} {
		assertNoSecret(t, "output", out)
	}
	if !strings.Contains(s.String(), "alice:xxxxx@") {
		t.Errorf("String = %q", s.String())
	}
}

func TestRedactorScrubsEchoedSecrets(t *testing.T) {
	s, err := NewSMTP("smtp://alice:"+testPass+"@127.0.0.1:25", time.Second)
	if err != nil {
		t.Fatal(err)
	}
	auth := base64.StdEncoding.EncodeToString([]byte("\x00alice\x00" + testPass))
	err = s.fail(context.Background(), "auth", fmt.Errorf("535 server says: %s and %s", auth, testPass))
	assertSendError(t, err, "auth", true, 0)
	if !strings.Contains(err.Error(), "xxxxx") {
		t.Errorf("err = %v", err)
	}
}

func TestSMTPSend(t *testing.T) {
	serverTLS, roots, err := smtptest.SelfSigned()
	if err != nil {
		t.Fatal(err)
	}
	trust := func(s *SMTP) { s.TLSConfig = &tls.Config{RootCAs: roots} }
	tests := []struct {
		name     string
		opts     []smtptest.Option
		userinfo string // "user:pass@" or ""
		scheme   string // "smtp" unless set
		query    string
		setup    func(*SMTP)
		prepare  func(*smtptest.Server)
		wantUser string
		wantTLS  bool
		// failure expectations; zero Op means success
		op        string
		temporary bool
		code      int
	}{
		{name: "plain, no auth"},
		{name: "auth", opts: []smtptest.Option{smtptest.WithAuth("alice", testPass)}, userinfo: "alice:" + testPass + "@", wantUser: "alice"},
		{name: "auth, percent-encoded password", opts: []smtptest.Option{smtptest.WithAuth("alice", "p@ss:w/d")}, userinfo: "alice:p%40ss%3Aw%2Fd@", wantUser: "alice"},
		{name: "STARTTLS, verified, auth", opts: []smtptest.Option{smtptest.WithSTARTTLS(serverTLS), smtptest.WithAuth("alice", testPass)}, userinfo: "alice:" + testPass + "@", setup: trust, wantUser: "alice", wantTLS: true},
		{name: "STARTTLS, skip_verify", opts: []smtptest.Option{smtptest.WithSTARTTLS(serverTLS)}, query: "?skip_verify=true", wantTLS: true},
		{name: "smtps, verified, auth", opts: []smtptest.Option{smtptest.WithImplicitTLS(serverTLS), smtptest.WithAuth("alice", testPass)}, scheme: "smtps", userinfo: "alice:" + testPass + "@", setup: trust, wantUser: "alice", wantTLS: true},

		{name: "wrong password", opts: []smtptest.Option{smtptest.WithAuth("alice", "other")}, userinfo: "alice:" + testPass + "@", op: "auth", code: 535},
		{name: "wrong password over STARTTLS", opts: []smtptest.Option{smtptest.WithSTARTTLS(serverTLS), smtptest.WithAuth("alice", "other")}, userinfo: "alice:" + testPass + "@", setup: trust, op: "auth", code: 535},
		{name: "auth required, none given", opts: []smtptest.Option{smtptest.WithAuth("alice", testPass)}, op: "mail", code: 530},
		{name: "credentials but no AUTH offered", opts: []smtptest.Option{smtptest.WithoutAuth()}, userinfo: "alice:" + testPass + "@", op: "auth"},
		{name: "451 on MAIL is temporary", prepare: func(s *smtptest.Server) { s.FailNext(1, 451) }, op: "mail", temporary: true, code: 451},
		{name: "550 on MAIL is permanent", prepare: func(s *smtptest.Server) { s.FailNext(1, 550) }, op: "mail", code: 550},
		{name: "452 after DATA is temporary", prepare: func(s *smtptest.Server) { s.FailNextData(1, 452) }, op: "data", temporary: true, code: 452},
		{name: "554 after DATA is permanent", prepare: func(s *smtptest.Server) { s.FailNextData(1, 554) }, op: "data", code: 554},
		{name: "message too big", opts: []smtptest.Option{smtptest.WithMaxMessageSize(100)}, op: "data", code: 552},
		{name: "untrusted certificate", opts: []smtptest.Option{smtptest.WithSTARTTLS(serverTLS)}, op: "starttls"},
		{name: "smtps, untrusted certificate", opts: []smtptest.Option{smtptest.WithImplicitTLS(serverTLS)}, scheme: "smtps", op: "tls"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := startServer(t, tt.opts...)
			if tt.prepare != nil {
				tt.prepare(srv)
			}
			scheme := tt.scheme
			if scheme == "" {
				scheme = "smtp"
			}
			s, err := NewSMTP(scheme+"://"+tt.userinfo+srv.Addr()+tt.query, shortWait)
			if err != nil {
				t.Fatal(err)
			}
			if tt.setup != nil {
				tt.setup(s)
			}
			msg := testMessage(t)
			err = s.Send(context.Background(), testFrom, "Jane <"+testRcpt+">", msg)
			if tt.op != "" {
				assertSendError(t, err, tt.op, tt.temporary, tt.code)
				if got := srv.Messages(); len(got) != 0 {
					t.Errorf("server stored %d messages after a failure", len(got))
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), shortWait)
			defer cancel()
			got, err := srv.WaitFor(ctx, 1)
			if err != nil {
				t.Fatal(err)
			}
			m := got[0]
			if m.From != "noreply@shop.example.com" || len(m.To) != 1 || m.To[0] != testRcpt {
				t.Errorf("envelope = %q -> %q", m.From, m.To)
			}
			if !bytes.Equal(m.Data, msg) {
				t.Errorf("data differs:\n got %q\nwant %q", m.Data, msg)
			}
			if m.User != tt.wantUser || m.TLS != tt.wantTLS {
				t.Errorf("User = %q TLS = %v, want %q %v", m.User, m.TLS, tt.wantUser, tt.wantTLS)
			}
		})
	}
}

func TestSMTPTemporaryFailureThenRetry(t *testing.T) {
	srv := startServer(t)
	srv.FailNext(1, 451)
	s, err := NewSMTP("smtp://"+srv.Addr(), shortWait)
	if err != nil {
		t.Fatal(err)
	}
	msg := testMessage(t)
	assertSendError(t, s.Send(context.Background(), testFrom, testRcpt, msg), "mail", true, 451)
	if err := s.Send(context.Background(), testFrom, testRcpt, msg); err != nil {
		t.Fatalf("retry: %v", err)
	}
	if n := len(srv.Messages()); n != 1 {
		t.Errorf("%d messages, want 1", n)
	}
}

func TestSMTPDotStuffing(t *testing.T) {
	srv := startServer(t)
	s, err := NewSMTP("smtp://"+srv.Addr(), shortWait)
	if err != nil {
		t.Fatal(err)
	}
	msg := []byte("Subject: dots\r\n\r\n.\r\n..two\r\n.end\r\n")
	if err := s.Send(context.Background(), testFrom, testRcpt, msg); err != nil {
		t.Fatal(err)
	}
	if got := srv.Messages()[0].Data; !bytes.Equal(got, msg) {
		t.Errorf("got %q, want %q", got, msg)
	}
}

func TestSMTPConcurrentSends(t *testing.T) {
	srv := startServer(t, smtptest.WithAuth("alice", testPass))
	s, err := NewSMTP("smtp://alice:"+testPass+"@"+srv.Addr(), shortWait)
	if err != nil {
		t.Fatal(err)
	}
	msg := testMessage(t)
	const n = 8
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Go(func() {
			errs <- s.Send(context.Background(), testFrom, fmt.Sprintf("u%d@example.org", i), msg)
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), shortWait)
	defer cancel()
	if _, err := srv.WaitFor(ctx, n); err != nil {
		t.Fatal(err)
	}
}

func TestSMTPBadEnvelope(t *testing.T) {
	srv := startServer(t)
	s, err := NewSMTP("smtp://"+srv.Addr(), shortWait)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ from, to string }{
		{testFrom, "jane@example.org>\r\nRCPT TO:<evil@example.com"},
		{testFrom, "not an address"},
		{"noreply@example.com\nX: y", testRcpt},
	} {
		err := s.Send(context.Background(), tc.from, tc.to, testMessage(t))
		se := assertSendError(t, err, "envelope", false, 0)
		var fe *FieldError
		if !errors.As(se, &fe) {
			t.Errorf("cause is %T, want *FieldError", se.Err)
		}
	}
	if n := len(srv.Messages()); n != 0 {
		t.Errorf("%d messages stored", n)
	}
}

func TestSMTPConnectionRefused(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	s, err := NewSMTP("smtp://alice:"+testPass+"@"+addr, shortWait)
	if err != nil {
		t.Fatal(err)
	}
	assertSendError(t, s.Send(context.Background(), testFrom, testRcpt, testMessage(t)), "dial", true, 0)
}

// rawServer accepts connections and hands each to handle; it stops with
// the test.
func rawServer(t *testing.T, handle func(net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Go(func() { handle(c) })
		}
	})
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().String()
}

// silent reads and discards until the connection closes, never answering.
func silent(c net.Conn) {
	buf := make([]byte, 512)
	for {
		if _, err := c.Read(buf); err != nil {
			return
		}
	}
}

func TestSMTPContextDeadline(t *testing.T) {
	addr := rawServer(t, silent)
	s, err := NewSMTP("smtp://alice:"+testPass+"@"+addr, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	err = s.Send(ctx, testFrom, testRcpt, testMessage(t))
	if took := time.Since(start); took > 3*time.Second {
		t.Errorf("Send took %v with a 100ms deadline", took)
	}
	assertSendError(t, err, "greeting", true, 0)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("err = %v, want it to wrap context.DeadlineExceeded", err)
	}
}

func TestSMTPContextCanceled(t *testing.T) {
	addr := rawServer(t, silent)
	s, err := NewSMTP("smtp://"+addr, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Send(ctx, testFrom, testRcpt, testMessage(t)) }()
	cancel()
	select {
	case err := <-done:
		// Depending on timing the dial or the greeting is interrupted.
		if !errors.Is(err, context.Canceled) || !domain.Temporary(err) {
			t.Errorf("err = %v, want a temporary error wrapping context.Canceled", err)
		}
	case <-time.After(shortWait):
		t.Fatal("Send did not return after cancel")
	}
}

func TestSMTPTimeoutOption(t *testing.T) {
	addr := rawServer(t, silent)
	s, err := NewSMTP("smtp://"+addr, 100*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	err = s.Send(context.Background(), testFrom, testRcpt, testMessage(t))
	if took := time.Since(start); took > 3*time.Second {
		t.Errorf("Send took %v with a 100ms timeout", took)
	}
	assertSendError(t, err, "greeting", true, 0)
}

func TestSMTPServiceUnavailableGreeting(t *testing.T) {
	addr := rawServer(t, func(c net.Conn) {
		fmt.Fprint(c, "421 4.3.2 try again later\r\n")
		c.Close()
	})
	s, err := NewSMTP("smtp://"+addr, shortWait)
	if err != nil {
		t.Fatal(err)
	}
	assertSendError(t, s.Send(context.Background(), testFrom, testRcpt, testMessage(t)), "greeting", true, 421)
}

func TestSMTPRefusesPlaintextAuthToRemoteHost(t *testing.T) {
	// "localhost" would be allowed; a name that is not one of the three
	// loopback names must not get the password without TLS. The test
	// server is reached through a dialer-independent name: its IP in
	// IPv4-mapped IPv6 form.
	srv := startServer(t)
	_, port, _ := net.SplitHostPort(srv.Addr())
	s, err := NewSMTP("smtp://alice:"+testPass+"@[::ffff:127.0.0.1]:"+port, shortWait)
	if err != nil {
		t.Fatal(err)
	}
	err = s.Send(context.Background(), testFrom, testRcpt, testMessage(t))
	assertSendError(t, err, "auth", false, 0)
	if !strings.Contains(err.Error(), "unencrypted") {
		t.Errorf("err = %v", err)
	}
}

func TestNewSender(t *testing.T) {
	s, err := NewSender("smtp://mail.example.com", t.TempDir(), 0)
	if err != nil || s.Transport() != "smtp" {
		t.Fatalf("NewSender(smtp) = %v, %v", s, err)
	}
	s, err = NewSender("", t.TempDir(), 0)
	if err != nil || s.Transport() != "outbox" {
		t.Fatalf("NewSender(outbox) = %v, %v", s, err)
	}
}
