package funnelkit

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"html"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// Endpoint labels given to Config.Observe: one per kind of request, so that
// a metric keeps a bounded set of label values.
const (
	EndpointContact   = "GET contacts/{id}"
	EndpointSearch    = "GET contacts"
	EndpointTags      = "GET tags"
	EndpointSetFields = "POST contacts/{id}/fields"
)

// MaxBodySize bounds the answers read; a larger one is an error.
const MaxBodySize = 4 << 20

// Client calls the FunnelKit Automations REST API of one site. It is safe
// for concurrent use.
type Client struct {
	base    *url.URL
	user    string
	prefix  string
	timeout time.Duration
	hc      *http.Client
	observe func(endpoint string, status int, kind Kind, d time.Duration)
	// creds is behind a pointer so that printing a Client, even by
	// reflection, shows an address and not the password.
	creds *credentials
}

type credentials struct {
	password string
	// secrets are the forms of the password that must never reach a
	// message: as given, without spaces, escaped, and the Basic token.
	secrets []string
}

// New checks cfg and makes a client. Its errors say which setting to fix.
func New(cfg Config) (*Client, error) {
	cfg, base, err := cfg.check()
	if err != nil {
		return nil, err
	}
	hc := cfg.HTTPClient
	if hc == nil {
		hc = &http.Client{
			Transport:     http.DefaultTransport.(*http.Transport).Clone(),
			CheckRedirect: checkRedirect,
		}
	}
	c := &Client{
		base: base, user: cfg.User, prefix: cfg.APIPrefix,
		timeout: cfg.Timeout, hc: hc, observe: cfg.Observe,
		creds: &credentials{password: cfg.Password},
	}
	for _, s := range []string{
		cfg.Password,
		strings.ReplaceAll(cfg.Password, " ", ""),
		url.QueryEscape(cfg.Password),
		url.PathEscape(cfg.Password),
		base64.StdEncoding.EncodeToString([]byte(cfg.User + ":" + cfg.Password)),
	} {
		if s != "" && !slices.Contains(c.creds.secrets, s) {
			c.creds.secrets = append(c.creds.secrets, s)
		}
	}
	return c, nil
}

// checkRedirect follows redirects of a GET (http → https, www) but not of a
// POST, which net/http would turn into a GET that writes nothing.
func checkRedirect(req *http.Request, via []*http.Request) error {
	if len(via) >= 5 || via[0].Method != http.MethodGet {
		return http.ErrUseLastResponse
	}
	return nil
}

// String describes the client without its password.
func (c Client) String() string {
	return fmt.Sprintf("funnelkit.Client{BaseURL: %q, User: %q, APIPrefix: %q, Timeout: %s}",
		c.base.String(), c.user, c.prefix, c.timeout)
}

// GoString is String.
func (c Client) GoString() string { return c.String() }

// Format prints String for every verb, so that no verb reaches the password.
func (c Client) Format(f fmt.State, verb rune) { _, _ = f.Write([]byte(c.String())) }

// LogValue logs the client without its password.
func (c Client) LogValue() slog.Value {
	return slog.GroupValue(
		slog.String("base_url", c.base.String()),
		slog.String("user", c.user),
		slog.String("api_prefix", c.prefix),
		slog.Duration("timeout", c.timeout),
	)
}

// call is one request to the API.
type call struct {
	method   string
	endpoint string   // bounded label for Observe
	path     []string // segments after v3/
	query    url.Values
	body     []byte
	// notFound is the hint for a WordPress 404 ("no such contact").
	notFound string
}

func (k call) op() string {
	op := k.method + " v3/" + strings.Join(k.path, "/")
	if k.endpoint == EndpointTags && len(k.query) > 0 {
		op += "?" + k.query.Encode()
	}
	return op
}

// envelope is a successful answer: {"code":200,"message":"…","result":…}.
type envelope struct {
	fields map[string]json.RawMessage
}

// result is the "result" member, nil when it is missing or null.
func (e envelope) result() json.RawMessage {
	r := e.fields["result"]
	if isNull(r) {
		return nil
	}
	return r
}

// do sends the request and checks the answer; every failure is a *Error.
func (c *Client) do(ctx context.Context, k call) (envelope, error) {
	start := time.Now()
	status, env, err := c.roundTrip(ctx, k)
	kind := KindOK
	if err != nil {
		kind = err.Kind
	}
	if c.observe != nil {
		c.observe(k.endpoint, status, kind, time.Since(start))
	}
	if err != nil {
		return envelope{}, err
	}
	return env, nil
}

func (c *Client) roundTrip(parent context.Context, k call) (int, envelope, *Error) {
	op := k.op()
	u := c.base.JoinPath(append([]string{"wp-json", c.prefix, "v3"}, k.path...)...)
	u.RawQuery = k.query.Encode()

	ctx, cancel := context.WithTimeout(parent, c.timeout)
	defer cancel()
	var body io.Reader
	if k.body != nil {
		body = bytes.NewReader(k.body)
	}
	req, err := http.NewRequestWithContext(ctx, k.method, u.String(), body)
	if err != nil {
		return 0, envelope{}, c.fail(op, KindClient, 0, "cannot make the request: "+err.Error(), err)
	}
	req.SetBasicAuth(c.user, c.creds.password)
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", "usersync")
	if k.body != nil {
		req.Header.Set("Content-Type", "application/json")
	}

	resp, err := c.hc.Do(req)
	if err != nil {
		return 0, envelope{}, c.transportError(parent, op, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, MaxBodySize+1))
	if err != nil {
		e := c.transportError(parent, op, err)
		e.Status = resp.StatusCode
		e.Message = "the answer broke off: " + e.Message
		return resp.StatusCode, envelope{}, e
	}
	if len(data) > MaxBodySize {
		return resp.StatusCode, envelope{}, c.fail(op, KindInvalidJSON, resp.StatusCode,
			fmt.Sprintf("the answer is larger than %d MiB: not what FunnelKit gives", MaxBodySize>>20), nil)
	}
	env, e := c.classify(op, k, resp, data)
	return resp.StatusCode, env, e
}

// fail makes a *Error, scrubbing any form of the password from the message
// and the cause.
func (c *Client) fail(op string, kind Kind, status int, msg string, cause error) *Error {
	return &Error{Op: op, Kind: kind, Status: status, Message: c.scrub(msg), err: c.cleanCause(cause)}
}

func (c *Client) scrub(s string) string {
	for _, secret := range c.creds.secrets {
		s = strings.ReplaceAll(s, secret, redacted)
	}
	return s
}

// cleanCause returns err unchanged unless its text holds the password (a
// redirect to a URL that carries it): then a *url.Error gets its URL
// scrubbed, and anything else is replaced by its scrubbed text, still
// matching context.Canceled and context.DeadlineExceeded.
func (c *Client) cleanCause(err error) error {
	if err == nil || c.scrub(err.Error()) == err.Error() {
		return err
	}
	if ue, ok := err.(*url.Error); ok {
		cp := *ue
		cp.URL = c.scrub(ue.URL)
		if c.scrub(cp.Error()) == cp.Error() {
			return &cp
		}
	}
	e := &scrubbedError{msg: c.scrub(err.Error())}
	for _, target := range []error{context.Canceled, context.DeadlineExceeded} {
		if errors.Is(err, target) {
			e.cause = target
		}
	}
	return e
}

type scrubbedError struct {
	msg   string
	cause error
}

func (e *scrubbedError) Error() string { return e.msg }
func (e *scrubbedError) Unwrap() error { return e.cause }

// transportError classifies a request that got no (complete) answer.
func (c *Client) transportError(parent context.Context, op string, err error) *Error {
	if perr := parent.Err(); perr != nil {
		return c.fail(op, KindUnreachable, 0, "stopped before an answer: "+perr.Error(), err)
	}
	var ne net.Error
	if errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout()) {
		return c.fail(op, KindUnreachable, 0, fmt.Sprintf("no answer within %s: the site is slow or down", c.timeout), err)
	}
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return c.fail(op, KindUnreachable, 0, "the site closed the connection without a complete answer", err)
	}
	cause := err
	var ue *url.Error
	if errors.As(err, &ue) {
		cause = ue.Err // the URL is in Op already
	}
	return c.fail(op, KindUnreachable, 0, "cannot reach the site: "+cause.Error(), err)
}

// classify turns an answer into an envelope or a *Error.
func (c *Client) classify(op string, k call, resp *http.Response, data []byte) (envelope, *Error) {
	status := resp.StatusCode
	body := bytes.TrimSpace(bytes.TrimPrefix(data, []byte("\xef\xbb\xbf")))
	switch {
	case status >= 500:
		return envelope{}, c.fail(op, KindServer, status, "the site failed"+c.said(body), nil)
	case status >= 300 && status < 400:
		loc := resp.Header.Get("Location")
		if u, err := resp.Location(); err == nil {
			loc = u.String()
		}
		loc = redactURL(loc)
		return envelope{}, c.fail(op, KindClient, status,
			fmt.Sprintf("redirected to %q: set --funnelkit-url to the address the site redirects to", clip(loc, 200)), nil)
	case status < 200:
		return envelope{}, c.fail(op, KindClient, status, "unexpected informational answer", nil)
	case looksHTML(body):
		if phpNotice(body) {
			return envelope{}, c.fail(op, KindInvalidJSON, status,
				"PHP messages printed before the JSON: turn off display_errors (WP_DEBUG_DISPLAY) on the site"+c.said(body), nil)
		}
		if status == http.StatusNotFound {
			return envelope{}, c.fail(op, KindHTML, status,
				"an HTML page instead of JSON: is --funnelkit-url the WordPress site address, with pretty permalinks enabled (Settings → Permalinks)?"+c.said(body), nil)
		}
		return envelope{}, c.fail(op, KindHTML, status,
			"an HTML page instead of JSON: a CDN or security plugin challenge page? allow the usersync server's address"+c.said(body), nil)
	case status == http.StatusUnauthorized || status == http.StatusForbidden:
		return envelope{}, c.authError(op, status, body)
	case len(body) == 0 && (status < 300 || status == http.StatusNotFound):
		return envelope{}, c.fail(op, KindEmptyBody, status,
			"empty answer: the site probably lacks pretty permalinks; enable them in Settings → Permalinks", nil)
	}

	var fields map[string]json.RawMessage
	if err := json.Unmarshal(body, &fields); err != nil || fields == nil {
		if status >= 400 {
			return envelope{}, c.fail(op, KindClient, status, "the site refused the request"+c.said(body), nil)
		}
		return envelope{}, c.fail(op, KindInvalidJSON, status, "the answer is not the JSON FunnelKit gives"+jsonProblem(body, err), nil)
	}
	// Some plugins answer 200 with an error object; believe the body.
	if code, ok := uintValue(fields["code"]); ok && code >= 400 && code < 600 && status < 300 {
		status = int(code)
		if status >= 500 {
			return envelope{}, c.fail(op, KindServer, status, "the site failed"+c.said(body), nil)
		}
		if status == http.StatusUnauthorized || status == http.StatusForbidden {
			return envelope{}, c.authError(op, status, body)
		}
	}
	if status < 300 {
		return envelope{fields: fields}, nil
	}
	wpCode := stringValue(fields["code"])
	switch {
	case status == http.StatusNotFound && wpCode == "rest_no_route":
		return envelope{}, c.fail(op, KindClient, status,
			"no such route: is FunnelKit Automations active, and is the API prefix right (sites with FunnelKit Automations Pro before 2.5.1 use autonami-admin)?"+c.said(body), nil)
	case status == http.StatusNotFound:
		hint := k.notFound
		if hint == "" {
			hint = "not found"
		}
		return envelope{}, c.fail(op, KindNotFound, status, hint+c.said(body), nil)
	}
	return envelope{}, c.fail(op, KindClient, status, "the site refused the request"+c.said(body), nil)
}

func (c *Client) authError(op string, status int, body []byte) *Error {
	msg := "the site refused the credentials: check --funnelkit-user and --funnelkit-password (an Application Password)"
	if status == http.StatusForbidden {
		msg += "; the user also needs the right to manage FunnelKit (an administrator)"
	}
	return c.fail(op, KindAuth, status, msg+c.said(body), nil)
}

// said quotes what the site said, if anything readable: the message of a
// WordPress error, the title of an HTML page, or the start of the text.
func (c *Client) said(body []byte) string {
	var text string
	switch {
	case len(body) == 0:
		return " (empty answer)"
	case looksHTML(body):
		text = htmlTitle(body)
		if text == "" && phpNotice(body) {
			text = stripTags(string(body))
		}
	default:
		var wp struct {
			Code    json.RawMessage `json:"code"`
			Message json.RawMessage `json:"message"`
		}
		if json.Unmarshal(body, &wp) == nil {
			text = stringValue(wp.Message)
			if code := stringValue(wp.Code); code != "" && !isDigits(code) {
				if text != "" {
					text = code + ": " + text
				} else {
					text = code
				}
			}
		} else {
			text = string(body)
		}
	}
	text = clip(oneLine(c.scrub(text)), 200)
	if text == "" {
		return ""
	}
	return " (the site says: " + strconv.Quote(text) + ")"
}

func looksHTML(body []byte) bool {
	return len(body) > 0 && body[0] == '<'
}

// phpNotice spots PHP warnings printed before a JSON answer.
func phpNotice(body []byte) bool {
	lower := bytes.ToLower(body)
	for _, m := range []string{"<b>warning</b>", "<b>notice</b>", "<b>deprecated</b>", "<b>fatal error</b>"} {
		if bytes.Contains(lower, []byte(m)) {
			return bytes.ContainsAny(body, "{")
		}
	}
	return false
}

func htmlTitle(body []byte) string {
	lower := bytes.ToLower(body)
	i := bytes.Index(lower, []byte("<title"))
	if i < 0 {
		return ""
	}
	j := bytes.IndexByte(lower[i:], '>')
	if j < 0 {
		return ""
	}
	start := i + j + 1
	end := bytes.Index(lower[start:], []byte("</title"))
	if end < 0 {
		return ""
	}
	return html.UnescapeString(string(body[start : start+end]))
}

func stripTags(s string) string {
	var b strings.Builder
	in := false
	for _, r := range s {
		switch {
		case r == '<':
			in = true
		case r == '>':
			in = false
			b.WriteByte(' ')
		case !in:
			b.WriteRune(r)
		}
	}
	return html.UnescapeString(b.String())
}

func jsonProblem(body []byte, err error) string {
	if err == nil {
		return " (not a JSON object)"
	}
	var se *json.SyntaxError
	if errors.As(err, &se) {
		return fmt.Sprintf(" (%s at byte %d)", se.Error(), se.Offset)
	}
	if errors.Is(err, io.ErrUnexpectedEOF) || strings.Contains(err.Error(), "unexpected end") {
		return " (cut short)"
	}
	return " (not a JSON object)"
}

// oneLine folds whitespace and drops control characters.
func oneLine(s string) string {
	if !utf8.ValidString(s) {
		s = strings.ToValidUTF8(s, "\uFFFD")
	}
	return strings.Join(strings.FieldsFunc(s, func(r rune) bool {
		return unicode.IsSpace(r) || unicode.IsControl(r)
	}), " ")
}

func clip(s string, n int) string {
	if utf8.RuneCountInString(s) <= n {
		return s
	}
	r := []rune(s)
	return string(r[:n]) + "…"
}

func isDigits(s string) bool {
	if s == "" {
		return false
	}
	for _, r := range s {
		if r < '0' || r > '9' {
			return false
		}
	}
	return true
}
