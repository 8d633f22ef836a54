// Package smtptest runs a real SMTP server on a loopback port for tests of
// code that sends mail. The protocol (EHLO, STARTTLS, AUTH PLAIN, MAIL,
// RCPT, DATA with dot-unstuffing, RSET, QUIT) is github.com/emersion/go-smtp's
// server; this package adds what tests need around it: it stores what it
// receives, lets a test wait for messages without sleeping, checks
// credentials, and can inject failure replies.
//
// It listens on 127.0.0.1 only and bounds line length, message size and
// recipients.
package smtptest

import (
	"context"
	"crypto/subtle"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"slices"
	"sync"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// Limits.
const (
	// MaxLineLength bounds a command or text line, CRLF included
	// (RFC 5321 section 4.5.3.1.6).
	MaxLineLength = 1000
	// DefaultMaxMessageSize bounds a message unless WithMaxMessageSize says
	// otherwise.
	DefaultMaxMessageSize = 10 << 20
	// MaxRecipients bounds RCPT TO per message.
	MaxRecipients = 100
	// idleTimeout closes a connection that sends nothing for this long.
	idleTimeout = time.Minute
)

// Message is one message the server accepted.
type Message struct {
	From string   // MAIL FROM address
	To   []string // RCPT TO addresses
	Data []byte   // the message, CRLF line endings, dot-unstuffed
	User string   // the AUTH PLAIN user, "" without AUTH
	TLS  bool     // whether the session was under TLS
}

// Option configures Start.
type Option func(*config)

type config struct {
	user, pass  string
	checkAuth   bool
	noAuth      bool
	tls         *tls.Config
	implicitTLS bool
	maxSize     int
}

// WithAuth makes the server accept only user/pass in AUTH PLAIN and
// require AUTH before MAIL. Without it any credentials are accepted and
// AUTH is optional.
func WithAuth(user, pass string) Option {
	return func(c *config) { c.user, c.pass, c.checkAuth = user, pass, true }
}

// WithoutAuth stops the server from advertising and accepting AUTH.
func WithoutAuth() Option { return func(c *config) { c.noAuth = true } }

// WithSTARTTLS makes the server advertise STARTTLS and upgrade with cfg.
func WithSTARTTLS(cfg *tls.Config) Option {
	return func(c *config) { c.tls, c.implicitTLS = cfg, false }
}

// WithImplicitTLS makes the server speak TLS from the first byte (smtps).
func WithImplicitTLS(cfg *tls.Config) Option {
	return func(c *config) { c.tls, c.implicitTLS = cfg, true }
}

// WithMaxMessageSize bounds the size of a message (DATA); larger ones get
// 552.
func WithMaxMessageSize(n int) Option { return func(c *config) { c.maxSize = n } }

// Server is a running test SMTP server.
type Server struct {
	cfg    config
	ln     net.Listener
	smtp   *smtp.Server
	served chan struct{} // closed when smtp.Serve returned

	mu       sync.Mutex
	msgs     []Message
	changed  chan struct{} // closed and replaced when msgs grows
	failMail []int         // reply codes for the next MAIL FROM commands
	failData []int         // reply codes for the next completed DATA
	closed   bool
	done     chan struct{} // closed by Close
}

// Start listens on 127.0.0.1:0 and serves until Close.
func Start(opts ...Option) (*Server, error) {
	s := &Server{
		cfg:     config{maxSize: DefaultMaxMessageSize},
		served:  make(chan struct{}),
		changed: make(chan struct{}),
		done:    make(chan struct{}),
	}
	for _, o := range opts {
		o(&s.cfg)
	}
	if s.cfg.maxSize <= 0 {
		s.cfg.maxSize = DefaultMaxMessageSize
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("smtptest: listen: %w", err)
	}
	srv := smtp.NewServer(smtp.BackendFunc(s.newSession))
	srv.Domain = "smtptest"
	srv.MaxLineLength = MaxLineLength
	srv.MaxMessageBytes = int64(s.cfg.maxSize)
	srv.MaxRecipients = MaxRecipients
	srv.ReadTimeout, srv.WriteTimeout = idleTimeout, idleTimeout
	// Clients may authenticate without TLS: the sender under test decides
	// whether it sends credentials in the clear (it does to loopback).
	srv.AllowInsecureAuth = true
	srv.ErrorLog = log.New(io.Discard, "", 0)
	if s.cfg.tls != nil {
		if s.cfg.implicitTLS {
			ln = tls.NewListener(ln, s.cfg.tls)
		} else {
			srv.TLSConfig = s.cfg.tls
		}
	}
	s.ln, s.smtp = ln, srv
	go func() {
		defer close(s.served)
		_ = srv.Serve(ln)
	}()
	return s, nil
}

// Addr is the host:port the server listens on.
func (s *Server) Addr() string { return s.ln.Addr().String() }

// Messages returns a copy of the messages received so far, in order.
func (s *Server) Messages() []Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.copyLocked()
}

func (s *Server) copyLocked() []Message {
	out := make([]Message, len(s.msgs))
	for i, m := range s.msgs {
		m.To = slices.Clone(m.To)
		m.Data = slices.Clone(m.Data)
		out[i] = m
	}
	return out
}

// WaitFor blocks until at least n messages were received and returns them,
// or returns ctx's error, or an error if the server is closed first.
func (s *Server) WaitFor(ctx context.Context, n int) ([]Message, error) {
	for {
		s.mu.Lock()
		if len(s.msgs) >= n {
			out := s.copyLocked()
			s.mu.Unlock()
			return out, nil
		}
		ch := s.changed
		s.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, fmt.Errorf("smtptest: waiting for %d messages: %w", n, ctx.Err())
		case <-s.done:
			return nil, errors.New("smtptest: server closed")
		}
	}
}

// FailNext answers the next n MAIL FROM commands with code (e.g. 451 for
// a temporary failure, 550 for a permanent one) instead of 250.
func (s *Server) FailNext(n int, code int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for range n {
		s.failMail = append(s.failMail, code)
	}
}

// FailNextData answers the end of the next n DATA transfers with code
// instead of 250; the message is not stored.
func (s *Server) FailNextData(n int, code int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for range n {
		s.failData = append(s.failData, code)
	}
}

// Close stops listening, closes open connections and waits until the
// server no longer accepts. A second Close does nothing.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	close(s.done)
	s.mu.Unlock()
	err := s.smtp.Close()
	// Serve registers the listener in its own goroutine; closing it here
	// too makes sure Serve returns even if Close came first.
	_ = s.ln.Close()
	<-s.served
	if err != nil {
		return fmt.Errorf("smtptest: close: %w", err)
	}
	return nil
}

// popFail takes the next injected reply code from q, 0 when there is none.
func (s *Server) popFail(q *[]int) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(*q) == 0 {
		return 0
	}
	code := (*q)[0]
	*q = (*q)[1:]
	return code
}

func (s *Server) store(m Message) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.msgs = append(s.msgs, m)
	close(s.changed)
	s.changed = make(chan struct{})
}

func (s *Server) newSession(c *smtp.Conn) (smtp.Session, error) {
	return &session{srv: s, conn: c}, nil
}

// session is one SMTP session (go-smtp starts a new one after STARTTLS,
// so authentication does not survive the upgrade).
type session struct {
	srv  *Server
	conn *smtp.Conn

	user   string // authenticated user
	authed bool
	from   string
	to     []string
}

var _ smtp.AuthSession = (*session)(nil)

// AuthMechanisms offers PLAIN unless WithoutAuth.
func (ss *session) AuthMechanisms() []string {
	if ss.srv.cfg.noAuth {
		return nil
	}
	return []string{sasl.Plain}
}

// Auth checks PLAIN credentials against WithAuth, or accepts any.
func (ss *session) Auth(mech string) (sasl.Server, error) {
	cfg := &ss.srv.cfg
	if cfg.noAuth {
		return nil, smtp.ErrAuthUnsupported
	}
	if mech != sasl.Plain {
		return nil, smtp.ErrAuthUnknownMechanism
	}
	return sasl.NewPlainServer(func(_, user, pass string) error {
		if cfg.checkAuth {
			okUser := subtle.ConstantTimeCompare([]byte(user), []byte(cfg.user)) == 1
			okPass := subtle.ConstantTimeCompare([]byte(pass), []byte(cfg.pass)) == 1
			if !okUser || !okPass {
				return smtp.ErrAuthFailed
			}
		}
		ss.authed, ss.user = true, user
		return nil
	}), nil
}

// Mail starts a transaction, unless AUTH is required and missing or a
// failure was injected with FailNext.
func (ss *session) Mail(from string, _ *smtp.MailOptions) error {
	if ss.srv.cfg.checkAuth && !ss.authed {
		return &smtp.SMTPError{Code: 530, EnhancedCode: smtp.EnhancedCode{5, 7, 0}, Message: "Authentication required"}
	}
	if code := ss.srv.popFail(&ss.srv.failMail); code != 0 {
		return injected(code)
	}
	ss.from, ss.to = from, nil
	return nil
}

// Rcpt adds a recipient.
func (ss *session) Rcpt(to string, _ *smtp.RcptOptions) error {
	ss.to = append(ss.to, to)
	return nil
}

// Data reads the message and stores it, unless it is too big or a failure
// was injected with FailNextData.
func (ss *session) Data(r io.Reader) error {
	data, err := io.ReadAll(r)
	if err != nil {
		return err // smtp.ErrDataTooLarge gives 552
	}
	if code := ss.srv.popFail(&ss.srv.failData); code != 0 {
		return injected(code)
	}
	_, isTLS := ss.conn.TLSConnectionState()
	ss.srv.store(Message{From: ss.from, To: slices.Clone(ss.to), Data: data, User: ss.user, TLS: isTLS})
	return nil
}

// Reset forgets the transaction.
func (ss *session) Reset() { ss.from, ss.to = "", nil }

// Logout ends the session.
func (ss *session) Logout() error { return nil }

// injected is the reply for an injected failure.
func injected(code int) *smtp.SMTPError {
	switch code / 100 {
	case 4:
		return &smtp.SMTPError{Code: code, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "Temporary failure (injected)"}
	case 5:
		return &smtp.SMTPError{Code: code, EnhancedCode: smtp.EnhancedCode{5, 7, 1}, Message: "Rejected (injected)"}
	default:
		return &smtp.SMTPError{Code: code, EnhancedCode: smtp.NoEnhancedCode, Message: "Injected reply"}
	}
}
