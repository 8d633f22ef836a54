package funnelkit

import (
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// Defaults filled in by New.
const (
	// DefaultTimeout bounds each request, from sending it to reading the
	// whole answer.
	DefaultTimeout = 15 * time.Second
	// DefaultAPIPrefix is FunnelKit's REST namespace. Sites with FunnelKit
	// Automations Pro older than 2.5.1 use "autonami-admin".
	DefaultAPIPrefix = "autonami-app"
)

// Config says which site to call and how.
type Config struct {
	// BaseURL is the WordPress site's address, as https://shop.example.com
	// or https://example.com/blog for a site in a folder; without
	// /wp-json, a query or credentials.
	BaseURL string
	// User is the WordPress user name that owns the Application Password.
	User string
	// Password is a WordPress Application Password ("abcd EFGH 1234 …"),
	// sent as given, spaces included. It is never printed.
	Password string
	// Timeout bounds each request; 0 means DefaultTimeout.
	Timeout time.Duration
	// APIPrefix is FunnelKit's REST namespace; "" means DefaultAPIPrefix.
	APIPrefix string
	// HTTPClient sends the requests; nil means a client of the package's
	// own that does not follow redirects of a POST.
	HTTPClient *http.Client
	// Observe, if set, is called after each request with a bounded
	// endpoint label (see the Endpoint constants), the HTTP status (0 when
	// there was no answer), the kind of failure (KindOK for success) and
	// the time taken. It suits a Prometheus histogram.
	Observe func(endpoint string, status int, kind Kind, d time.Duration)
}

const redacted = "[redacted]"

// String describes the config with the password redacted.
func (c Config) String() string {
	timeout := c.Timeout
	if timeout == 0 {
		timeout = DefaultTimeout
	}
	prefix := c.APIPrefix
	if prefix == "" {
		prefix = DefaultAPIPrefix
	}
	return fmt.Sprintf("funnelkit.Config{BaseURL: %q, User: %q, Password: %s, Timeout: %s, APIPrefix: %q}",
		redactURL(c.BaseURL), c.User, redactPassword(c.Password), timeout, prefix)
}

// GoString is String: %#v must not print the password either.
func (c Config) GoString() string { return c.String() }

// Format prints String for every verb, so that no verb (%d, %x, …) reaches
// the password field.
func (c Config) Format(f fmt.State, verb rune) { _, _ = f.Write([]byte(c.String())) }

// LogValue logs the config with the password redacted.
func (c Config) LogValue() slog.Value {
	return slog.GroupValue(
		slog.String("base_url", redactURL(c.BaseURL)),
		slog.String("user", c.User),
		slog.String("password", redactPassword(c.Password)),
		slog.Duration("timeout", c.Timeout),
		slog.String("api_prefix", c.APIPrefix),
	)
}

func redactPassword(p string) string {
	if p == "" {
		return "(empty)"
	}
	return redacted
}

// redactURL shows a URL without a password in its user info. A URL that does
// not parse is not shown at all: it may hold anything.
func redactURL(s string) string {
	if s == "" {
		return ""
	}
	u, err := url.Parse(s)
	if err != nil {
		return "(not a valid URL)"
	}
	if u.User != nil {
		u.User = url.User(redacted)
	}
	if u.RawQuery != "" {
		u.RawQuery = redacted
	}
	return u.String()
}

// parseBaseURL checks BaseURL and returns it without a trailing slash. Its
// errors name the flag to fix and never echo a password.
func parseBaseURL(s string) (*url.URL, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return nil, errors.New("funnelkit: --funnelkit-url is empty: set it to the WordPress site address, for example https://shop.example.com")
	}
	u, err := url.Parse(s)
	if err != nil {
		// The parse error is not shown: it echoes parts of the URL, which
		// may hold credentials.
		return nil, errors.New("funnelkit: --funnelkit-url is not a valid URL: give the site address, for example https://shop.example.com")
	}
	if u.User != nil {
		return nil, errors.New("funnelkit: --funnelkit-url must not hold a user or password: give them with --funnelkit-user and --funnelkit-password")
	}
	shown := redactURL(s)
	if u.Scheme != "http" && u.Scheme != "https" {
		return nil, fmt.Errorf("funnelkit: --funnelkit-url %q must be an absolute http:// or https:// URL, for example https://shop.example.com", shown)
	}
	if u.Host == "" || u.Hostname() == "" {
		return nil, fmt.Errorf("funnelkit: --funnelkit-url %q has no host name", shown)
	}
	if u.RawQuery != "" || u.ForceQuery || u.Fragment != "" {
		return nil, fmt.Errorf("funnelkit: --funnelkit-url %q must not have a query or fragment: give the site address only", shown)
	}
	if strings.Contains(u.Path, "/wp-json") {
		return nil, fmt.Errorf("funnelkit: --funnelkit-url %q: give the site address without /wp-json/…", shown)
	}
	u.Path = strings.TrimRight(u.Path, "/")
	u.RawPath = ""
	return u, nil
}

func validAPIPrefix(p string) bool {
	if p == "" || len(p) > 64 {
		return false
	}
	for _, r := range p {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '-', r == '_':
		default:
			return false
		}
	}
	return true
}

func hasControl(s string) bool {
	return strings.ContainsFunc(s, func(r rune) bool { return r < 0x20 || r == 0x7f })
}

// check validates the config and fills in the defaults.
func (c Config) check() (Config, *url.URL, error) {
	base, err := parseBaseURL(c.BaseURL)
	if err != nil {
		return c, nil, err
	}
	switch {
	case c.User == "":
		return c, nil, errors.New("funnelkit: --funnelkit-user is empty: set the WordPress user name that owns the Application Password")
	case strings.Contains(c.User, ":") || hasControl(c.User):
		return c, nil, errors.New("funnelkit: --funnelkit-user must not contain ':' or control characters")
	case c.Password == "":
		return c, nil, errors.New("funnelkit: --funnelkit-password is empty: create an Application Password in WordPress (Users → Profile → Application Passwords)")
	case hasControl(c.Password):
		return c, nil, errors.New("funnelkit: --funnelkit-password contains a control character (a trailing newline from a file?)")
	case c.Timeout < 0:
		return c, nil, fmt.Errorf("funnelkit: timeout %s is negative: give a positive duration such as 15s", c.Timeout)
	}
	if c.Timeout == 0 {
		c.Timeout = DefaultTimeout
	}
	c.APIPrefix = strings.Trim(c.APIPrefix, "/")
	if c.APIPrefix == "" {
		c.APIPrefix = DefaultAPIPrefix
	}
	if !validAPIPrefix(c.APIPrefix) {
		return c, nil, fmt.Errorf("funnelkit: API prefix %q: use letters, digits, '-' or '_' only, such as %s or autonami-admin", c.APIPrefix, DefaultAPIPrefix)
	}
	return c, base, nil
}
