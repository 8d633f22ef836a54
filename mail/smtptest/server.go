// Package smtptest is an in-process SMTP server for tests of code that
// sends mail. It speaks enough of RFC 5321 for net/smtp: EHLO/HELO,
// STARTTLS (when given a certificate), AUTH PLAIN, MAIL, RCPT, DATA with
// dot-unstuffing, RSET, NOOP, VRFY and QUIT. It stores what it receives,
// lets a test wait for messages without sleeping, and can inject failure
// replies.
//
// It listens on 127.0.0.1 only, bounds line length, message size and
// recipients, and handles each connection in its own goroutine.
package smtptest

import (
	"bufio"
	"context"
	"crypto/subtle"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"time"
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
	cfg config
	ln  net.Listener

	mu       sync.Mutex
	msgs     []Message
	changed  chan struct{} // closed and replaced when msgs grows
	failMail []int         // reply codes for the next MAIL FROM commands
	failData []int         // reply codes for the next completed DATA
	conns    map[net.Conn]struct{}
	closed   bool

	done chan struct{}
	wg   sync.WaitGroup
}

// Start listens on 127.0.0.1:0 and serves until Close.
func Start(opts ...Option) (*Server, error) {
	s := &Server{
		cfg:     config{maxSize: DefaultMaxMessageSize},
		changed: make(chan struct{}),
		conns:   make(map[net.Conn]struct{}),
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
		return nil, err
	}
	if s.cfg.tls != nil && s.cfg.implicitTLS {
		ln = tls.NewListener(ln, s.cfg.tls)
	}
	s.ln = ln
	s.wg.Add(1)
	go s.serve()
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
		m.To = append([]string(nil), m.To...)
		m.Data = append([]byte(nil), m.Data...)
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

// Close stops listening, closes open connections and waits for their
// goroutines.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	close(s.done)
	err := s.ln.Close()
	for c := range s.conns {
		_ = c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
	return err
}

func (s *Server) serve() {
	defer s.wg.Done()
	for {
		c, err := s.ln.Accept()
		if err != nil {
			return // closed
		}
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			_ = c.Close()
			return
		}
		s.conns[c] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		go func() {
			defer s.wg.Done()
			defer func() {
				s.mu.Lock()
				delete(s.conns, c)
				s.mu.Unlock()
				_ = c.Close()
			}()
			sess := &session{srv: s, conn: c}
			if tc, ok := c.(*tls.Conn); ok {
				_ = c.SetDeadline(time.Now().Add(idleTimeout))
				if err := tc.Handshake(); err != nil {
					return
				}
				sess.tls = true
			}
			sess.run()
		}()
	}
}

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

// errLineTooLong ends a session whose client sent an over-long line.
var errLineTooLong = errors.New("line too long")

type session struct {
	srv  *Server
	conn net.Conn
	r    *bufio.Reader
	w    *bufio.Writer
	tls  bool

	helo   bool
	ehlo   bool
	user   string // authenticated user
	authed bool
	from   string
	inTx   bool
	to     []string
	errors int
}

func (ss *session) reply(format string, args ...any) error {
	fmt.Fprintf(ss.w, format+"\r\n", args...)
	return ss.w.Flush()
}

func (ss *session) readLine() (string, error) {
	_ = ss.conn.SetDeadline(time.Now().Add(idleTimeout))
	var b []byte
	for {
		c, err := ss.r.ReadByte()
		if err != nil {
			return "", err
		}
		b = append(b, c)
		if c == '\n' {
			break
		}
		if len(b) >= MaxLineLength {
			// Drain the rest of the line (bounded) so that closing the
			// connection after the 500 reply does not reset it.
			for n := 0; n < 1<<20; n++ {
				if c, err := ss.r.ReadByte(); err != nil || c == '\n' {
					break
				}
			}
			return "", errLineTooLong
		}
	}
	s := string(b)
	s = strings.TrimSuffix(s, "\n")
	s = strings.TrimSuffix(s, "\r")
	return s, nil
}

func (ss *session) resetTx() {
	ss.from, ss.inTx, ss.to = "", false, nil
}

func (ss *session) run() {
	ss.r = bufio.NewReader(ss.conn)
	ss.w = bufio.NewWriter(ss.conn)
	if ss.reply("220 smtptest ESMTP ready") != nil {
		return
	}
	for {
		line, err := ss.readLine()
		if errors.Is(err, errLineTooLong) {
			_ = ss.reply("500 5.5.2 Line too long")
			return
		}
		if err != nil {
			return
		}
		verb, arg, _ := strings.Cut(line, " ")
		verb = strings.ToUpper(verb)
		quit, err := ss.command(verb, arg)
		if err != nil || quit {
			return
		}
		if ss.errors >= 10 {
			_ = ss.reply("421 4.7.0 Too many errors")
			return
		}
	}
}

// command handles one command; it reports whether the session ends.
func (ss *session) command(verb, arg string) (bool, error) {
	cfg := &ss.srv.cfg
	bad := func(format string, args ...any) (bool, error) {
		ss.errors++
		return false, ss.reply(format, args...)
	}
	switch verb {
	case "EHLO", "HELO":
		if strings.TrimSpace(arg) == "" {
			return bad("501 5.5.4 %s needs a domain", verb)
		}
		ss.resetTx()
		ss.helo, ss.ehlo = true, verb == "EHLO"
		if !ss.ehlo {
			return false, ss.reply("250 smtptest")
		}
		lines := []string{"smtptest greets " + arg, "8BITMIME", fmt.Sprintf("SIZE %d", cfg.maxSize)}
		if cfg.tls != nil && !ss.tls {
			lines = append(lines, "STARTTLS")
		}
		if !cfg.noAuth {
			lines = append(lines, "AUTH PLAIN")
		}
		for i, l := range lines {
			sep := "-"
			if i == len(lines)-1 {
				sep = " "
			}
			fmt.Fprintf(ss.w, "250%s%s\r\n", sep, l)
		}
		return false, ss.w.Flush()

	case "STARTTLS":
		if cfg.tls == nil || ss.tls {
			return bad("502 5.5.1 STARTTLS not available")
		}
		if arg != "" {
			return bad("501 5.5.4 No parameters allowed")
		}
		if err := ss.reply("220 2.0.0 Ready to start TLS"); err != nil {
			return true, err
		}
		tc := tls.Server(ss.conn, cfg.tls)
		_ = ss.conn.SetDeadline(time.Now().Add(idleTimeout))
		if err := tc.Handshake(); err != nil {
			return true, err
		}
		ss.conn, ss.tls = tc, true
		ss.r, ss.w = bufio.NewReader(tc), bufio.NewWriter(tc)
		// RFC 3207: forget everything learned before TLS.
		ss.helo, ss.ehlo, ss.authed, ss.user = false, false, false, ""
		ss.resetTx()
		return false, nil

	case "AUTH":
		return ss.auth(arg)

	case "MAIL":
		if !ss.helo {
			return bad("503 5.5.1 Send HELO/EHLO first")
		}
		if cfg.checkAuth && !ss.authed {
			return bad("530 5.7.0 Authentication required")
		}
		if ss.inTx {
			return bad("503 5.5.1 Nested MAIL command")
		}
		addr, ok := path(arg, "FROM:")
		if !ok {
			return bad("501 5.5.4 Syntax: MAIL FROM:<address>")
		}
		if code := ss.srv.popFail(&ss.srv.failMail); code != 0 {
			return false, ss.reply("%d %s", code, injected(code))
		}
		ss.from, ss.inTx, ss.to = addr, true, nil
		return false, ss.reply("250 2.1.0 Sender OK")

	case "RCPT":
		if !ss.inTx {
			return bad("503 5.5.1 Need MAIL before RCPT")
		}
		addr, ok := path(arg, "TO:")
		if !ok || addr == "" {
			return bad("501 5.5.4 Syntax: RCPT TO:<address>")
		}
		if len(ss.to) >= MaxRecipients {
			return bad("452 4.5.3 Too many recipients")
		}
		ss.to = append(ss.to, addr)
		return false, ss.reply("250 2.1.5 Recipient OK")

	case "DATA":
		if !ss.inTx || len(ss.to) == 0 {
			return bad("503 5.5.1 Need RCPT before DATA")
		}
		if err := ss.reply("354 Start mail input; end with <CRLF>.<CRLF>"); err != nil {
			return true, err
		}
		return ss.data()

	case "RSET":
		ss.resetTx()
		return false, ss.reply("250 2.0.0 OK")
	case "NOOP":
		return false, ss.reply("250 2.0.0 OK")
	case "VRFY":
		return false, ss.reply("252 2.5.2 Cannot VRFY user")
	case "QUIT":
		_ = ss.reply("221 2.0.0 Bye")
		return true, nil
	default:
		return bad("500 5.5.2 Command not recognized")
	}
}

func (ss *session) auth(arg string) (bool, error) {
	cfg := &ss.srv.cfg
	bad := func(format string, args ...any) (bool, error) {
		ss.errors++
		return false, ss.reply(format, args...)
	}
	if cfg.noAuth {
		return bad("502 5.5.1 AUTH not available")
	}
	if !ss.ehlo {
		return bad("503 5.5.1 Send EHLO first")
	}
	if ss.authed {
		return bad("503 5.5.1 Already authenticated")
	}
	if ss.inTx {
		return bad("503 5.5.1 AUTH not allowed during a mail transaction")
	}
	mech, initial, _ := strings.Cut(arg, " ")
	if !strings.EqualFold(mech, "PLAIN") {
		return bad("504 5.5.4 Unrecognized authentication type")
	}
	if initial == "" {
		if err := ss.reply("334 "); err != nil {
			return true, err
		}
		line, err := ss.readLine()
		if err != nil {
			return true, err
		}
		initial = line
	}
	if initial == "*" {
		return bad("501 5.0.0 Authentication cancelled")
	}
	raw, err := base64.StdEncoding.DecodeString(initial)
	if err != nil {
		return bad("501 5.5.2 Cannot decode response")
	}
	parts := strings.Split(string(raw), "\x00")
	if len(parts) != 3 {
		return bad("501 5.5.2 Bad PLAIN response")
	}
	user, pass := parts[1], parts[2]
	if cfg.checkAuth {
		okUser := subtle.ConstantTimeCompare([]byte(user), []byte(cfg.user)) == 1
		okPass := subtle.ConstantTimeCompare([]byte(pass), []byte(cfg.pass)) == 1
		if !okUser || !okPass {
			return bad("535 5.7.8 Authentication credentials invalid")
		}
	}
	ss.authed, ss.user = true, user
	return false, ss.reply("235 2.7.0 Authentication successful")
}

// data reads the message after 354 up to the lone ".", undoing dot
// stuffing, and answers it.
func (ss *session) data() (bool, error) {
	max := ss.srv.cfg.maxSize
	var buf []byte
	tooBig := false
	for {
		line, err := ss.readLine()
		if errors.Is(err, errLineTooLong) {
			_ = ss.reply("500 5.5.2 Line too long")
			return true, err
		}
		if err != nil {
			return true, err
		}
		if line == "." {
			break
		}
		line = strings.TrimPrefix(line, ".")
		if tooBig {
			continue // discard until the end of DATA
		}
		if len(buf)+len(line)+2 > max {
			tooBig, buf = true, nil
			continue
		}
		buf = append(buf, line...)
		buf = append(buf, '\r', '\n')
	}
	m := Message{From: ss.from, To: ss.to, Data: buf, User: ss.user, TLS: ss.tls}
	ss.resetTx()
	if tooBig {
		return false, ss.reply("552 5.3.4 Message too big")
	}
	if code := ss.srv.popFail(&ss.srv.failData); code != 0 {
		return false, ss.reply("%d %s", code, injected(code))
	}
	ss.srv.store(m)
	return false, ss.reply("250 2.0.0 OK queued")
}

// path parses "FROM:<addr> params" (or "TO:..."), returning addr.
func path(arg, prefix string) (string, bool) {
	if len(arg) < len(prefix) || !strings.EqualFold(arg[:len(prefix)], prefix) {
		return "", false
	}
	rest := strings.TrimLeft(arg[len(prefix):], " ")
	if !strings.HasPrefix(rest, "<") {
		return "", false
	}
	end := strings.IndexByte(rest, '>')
	if end < 0 {
		return "", false
	}
	return rest[1:end], true
}

func injected(code int) string {
	switch code / 100 {
	case 4:
		return "4.3.0 Temporary failure (injected)"
	case 5:
		return "5.7.1 Rejected (injected)"
	default:
		return "Injected reply"
	}
}
