package mail

import (
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/smtp"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// DefaultTimeout bounds one SMTP Send when NewSMTP is given no timeout.
const DefaultTimeout = 30 * time.Second

// SMTP sends through an SMTP relay. Create it with NewSMTP; set the
// exported fields, if at all, before the first Send.
type SMTP struct {
	// TLSConfig, if set, is used for STARTTLS and smtps (cloned; ServerName
	// defaults to the relay host).
	TLSConfig *tls.Config
	// InsecureSkipVerify turns off certificate verification. It is off
	// unless set here or by ?skip_verify=true in the URL.
	InsecureSkipVerify bool
	// LocalName is the name sent with EHLO; "localhost" when empty.
	LocalName string

	host        string
	port        string
	implicitTLS bool
	user        string
	// pass is behind a pointer so that reflection-based printing of an SMTP
	// (%+v of a struct holding one) shows an address, never the password.
	pass    *secret
	timeout time.Duration
}

type secret struct{ s string }

// NewSMTP parses rawURL, smtp://[user[:pass]@]host[:port][?skip_verify=true]
// or smtps://..., and returns a sender for it. smtp uses port 25 and
// STARTTLS when the server offers it; smtps uses port 465 and TLS from the
// start. User and password are percent-decoded and sent with AUTH PLAIN.
// timeout bounds each Send (DefaultTimeout when <= 0). Errors never
// contain the password.
func NewSMTP(rawURL string, timeout time.Duration) (*SMTP, error) {
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	s := &SMTP{timeout: timeout, pass: &secret{}}
	scheme, rest, ok := strings.Cut(rawURL, "://")
	if !ok {
		return nil, errors.New("--smtp-url: want smtp://[user[:pass]@]host[:port]")
	}
	switch strings.ToLower(scheme) {
	case "smtp":
	case "smtps":
		s.implicitTLS = true
	default:
		return nil, errors.New("--smtp-url: scheme must be smtp or smtps")
	}

	// Split the authority off by hand so that url.Parse, whose errors quote
	// its input, never sees the credentials.
	authority, tail := rest, ""
	if i := strings.IndexAny(rest, "/?#"); i >= 0 {
		authority, tail = rest[:i], rest[i:]
	}
	hostport := authority
	if i := strings.LastIndexByte(authority, '@'); i >= 0 {
		userinfo := authority[:i]
		hostport = authority[i+1:]
		rawUser, rawPass, _ := strings.Cut(userinfo, ":")
		user, err1 := url.PathUnescape(rawUser)
		pass, err2 := url.PathUnescape(rawPass)
		if err1 != nil || err2 != nil {
			return nil, errors.New("--smtp-url: bad percent-encoding in user or password")
		}
		if user == "" {
			return nil, errors.New("--smtp-url: user is empty")
		}
		if strings.ContainsAny(user+pass, "\x00\r\n") {
			return nil, errors.New("--smtp-url: user or password contains NUL, CR or LF")
		}
		s.user, s.pass.s = user, pass
	}

	if hostport == "" {
		return nil, errors.New("--smtp-url: missing host")
	}
	hu, err := url.Parse("smtp://" + hostport)
	if err != nil {
		if strings.Contains(err.Error(), "port") {
			return nil, errors.New("--smtp-url: port must be a number from 1 to 65535")
		}
		return nil, fmt.Errorf("--smtp-url: bad host %q", hostport)
	}
	s.host = hu.Hostname()
	if s.host == "" {
		return nil, errors.New("--smtp-url: missing host")
	}
	if strings.ContainsAny(s.host, " %\\") {
		return nil, fmt.Errorf("--smtp-url: bad host %q", s.host)
	}
	switch p := hu.Port(); {
	case p == "" && strings.HasSuffix(hostport, ":"):
		return nil, errors.New("--smtp-url: port must be a number from 1 to 65535")
	case p == "" && s.implicitTLS:
		s.port = "465"
	case p == "":
		s.port = "25"
	default:
		n, err := strconv.Atoi(p)
		if err != nil || n < 1 || n > 65535 {
			return nil, errors.New("--smtp-url: port must be a number from 1 to 65535")
		}
		s.port = strconv.Itoa(n)
	}

	if tail != "" {
		if strings.Contains(tail, "#") {
			return nil, errors.New("--smtp-url: fragment not allowed")
		}
		path, query, _ := strings.Cut(tail, "?")
		if path != "" && path != "/" {
			return nil, errors.New("--smtp-url: path not allowed")
		}
		q, err := url.ParseQuery(query)
		if err != nil {
			return nil, errors.New("--smtp-url: bad query")
		}
		for k, v := range q {
			switch k {
			case "skip_verify":
				b, err := strconv.ParseBool(v[len(v)-1])
				if err != nil {
					return nil, errors.New("--smtp-url: skip_verify must be true or false")
				}
				s.InsecureSkipVerify = b
			default:
				return nil, fmt.Errorf("--smtp-url: unknown option %q (known: skip_verify)", k)
			}
		}
	}
	return s, nil
}

// Transport returns "smtp".
func (s *SMTP) Transport() string { return TransportSMTP }

// Addr is the relay's host:port.
func (s *SMTP) Addr() string { return net.JoinHostPort(s.host, s.port) }

// String is the URL with the password replaced by "xxxxx".
func (s *SMTP) String() string {
	u := url.URL{Scheme: "smtp", Host: s.Addr()}
	if s.implicitTLS {
		u.Scheme = "smtps"
	}
	if s.user != "" {
		if s.pass.s != "" {
			u.User = url.UserPassword(s.user, "xxxxx")
		} else {
			u.User = url.User(s.user)
		}
	}
	if s.InsecureSkipVerify {
		u.RawQuery = "skip_verify=true"
	}
	return u.String()
}

// GoString is String, so %#v redacts too.
func (s *SMTP) GoString() string { return "mail.SMTP(" + s.String() + ")" }

// LogValue is String, for log/slog.
func (s *SMTP) LogValue() slog.Value { return slog.StringValue(s.String()) }

func (s *SMTP) tlsConfig() *tls.Config {
	var c *tls.Config
	if s.TLSConfig != nil {
		c = s.TLSConfig.Clone()
	} else {
		c = &tls.Config{MinVersion: tls.VersionTLS12}
	}
	if c.ServerName == "" {
		c.ServerName = s.host
	}
	if s.InsecureSkipVerify {
		c.InsecureSkipVerify = true
	}
	return c
}

func (s *SMTP) redactor() redactor {
	if s.pass.s == "" {
		return redactor{}
	}
	plain := "\x00" + s.user + "\x00" + s.pass.s
	return redactor{needles: []string{
		s.pass.s,
		url.QueryEscape(s.pass.s),
		url.PathEscape(s.pass.s),
		base64.StdEncoding.EncodeToString([]byte(plain)),
		base64.StdEncoding.EncodeToString([]byte(s.pass.s)),
	}}
}

// fail builds the SendError for a failure at op; ctx's error joins it when
// the context ended.
func (s *SMTP) fail(ctx context.Context, op string, err error) error {
	if cerr := ctx.Err(); cerr != nil && !errors.Is(err, cerr) {
		err = fmt.Errorf("%w: %w", cerr, err)
	}
	temporary, code := classify(err)
	return &SendError{Transport: TransportSMTP, Op: op, Code: code, temporary: temporary, Err: s.redactor().err(err)}
}

// aLongTimeAgo is a deadline in the past, to unblock pending I/O.
var aLongTimeAgo = time.Unix(1, 0)

// Send delivers msg in one SMTP session: EHLO, STARTTLS if offered (smtp
// scheme), AUTH PLAIN if credentials were given, MAIL, RCPT, DATA, QUIT.
// It returns once the server accepted the message; a failing QUIT after
// that is ignored so the caller does not send it twice. ctx and the
// timeout bound the whole session.
func (s *SMTP) Send(ctx context.Context, from string, to string, msg []byte) error {
	fromAddr, toAddr, err := envelope(TransportSMTP, from, to)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()

	var d net.Dialer
	raw, err := d.DialContext(ctx, "tcp", s.Addr())
	if err != nil {
		return s.fail(ctx, "dial", err)
	}
	defer raw.Close()
	// ctx carries the timeout; when it ends, a past deadline unblocks
	// whatever read or write is pending, and ctx.Err() is already set.
	stop := context.AfterFunc(ctx, func() { _ = raw.SetDeadline(aLongTimeAgo) })
	defer stop()

	conn := raw
	secure := false
	if s.implicitTLS {
		tc := tls.Client(raw, s.tlsConfig())
		if err := tc.HandshakeContext(ctx); err != nil {
			return s.fail(ctx, "tls", err)
		}
		conn, secure = tc, true
	}

	c, err := smtp.NewClient(conn, s.host)
	if err != nil {
		return s.fail(ctx, "greeting", err)
	}
	defer c.Close()
	localName := s.LocalName
	if localName == "" {
		localName = "localhost"
	}
	if err := c.Hello(localName); err != nil {
		return s.fail(ctx, "ehlo", err)
	}
	if ok, _ := c.Extension("STARTTLS"); ok && !secure {
		if err := c.StartTLS(s.tlsConfig()); err != nil {
			return s.fail(ctx, "starttls", err)
		}
		secure = true
	}
	if s.user != "" {
		ok, mechs := c.Extension("AUTH")
		if !ok {
			return s.fail(ctx, "auth", permanentError{"credentials given but the server does not offer AUTH"})
		}
		if !hasWord(mechs, "PLAIN") {
			return s.fail(ctx, "auth", permanentError{"server does not offer AUTH PLAIN (offers " + mechs + ")"})
		}
		if !secure && !isLocalhost(s.host) {
			return s.fail(ctx, "auth", permanentError{"refusing to send credentials over an unencrypted connection (server did not offer STARTTLS)"})
		}
		if err := c.Auth(smtp.PlainAuth("", s.user, s.pass.s, s.host)); err != nil {
			return s.fail(ctx, "auth", err)
		}
	}
	if err := c.Mail(fromAddr); err != nil {
		return s.fail(ctx, "mail", err)
	}
	if err := c.Rcpt(toAddr); err != nil {
		return s.fail(ctx, "rcpt", err)
	}
	w, err := c.Data()
	if err != nil {
		return s.fail(ctx, "data", err)
	}
	if _, err := w.Write(msg); err != nil {
		return s.fail(ctx, "data", err)
	}
	if err := w.Close(); err != nil {
		return s.fail(ctx, "data", err)
	}
	_ = c.Quit() // accepted: a failing QUIT must not make the caller resend
	return nil
}

// isLocalhost mirrors net/smtp: PlainAuth allows plaintext only to these.
func isLocalhost(host string) bool {
	return host == "localhost" || host == "127.0.0.1" || host == "::1"
}

func hasWord(list, word string) bool {
	for _, f := range strings.Fields(list) {
		if strings.EqualFold(f, word) {
			return true
		}
	}
	return false
}
