package mail

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"mime"
	"mime/quotedprintable"
	"net/mail"
	"net/url"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// Welcome is what the welcome email says. It deliberately has no password:
// the password was set by the site and is never mailed.
type Welcome struct {
	// To is the recipient, "user@example.com" or "Name <user@example.com>".
	To string
	// Login is the user's login name (WordPress user_login).
	Login string
	// LoginURL is the site's login page, http or https; optional.
	LoginURL string
	// SiteName names the site in the subject and body; optional.
	SiteName string
}

// FieldError reports an input that cannot go into a message: a bad
// address, a CR or LF that would inject a header, an over-long value.
type FieldError struct {
	Field  string // "From", "To", "Login", "LoginURL", "SiteName", "Message-ID"
	Reason string
}

func (e *FieldError) Error() string { return "mail: invalid " + e.Field + ": " + e.Reason }

// Limits on the inputs of Compose; they keep every header line well under
// the 998-octet limit of RFC 5322.
const (
	maxAddressLen  = 320
	maxLoginLen    = 200
	maxSiteNameLen = 200
	maxURLLen      = 2000
	maxHeaderLine  = 998
)

// Compose builds the welcome message from from to w.To, dated now, with the
// given Message-ID (angle brackets optional; a random one is made when it is
// empty). The result uses CRLF line endings and a quoted-printable UTF-8
// text/plain body. Every error is a *FieldError.
func Compose(from string, w Welcome, now time.Time, messageID string) ([]byte, error) {
	fromAddr, err := ParseAddress("From", from)
	if err != nil {
		return nil, err
	}
	toAddr, err := ParseAddress("To", w.To)
	if err != nil {
		return nil, err
	}
	if err := checkText("Login", w.Login, maxLoginLen); err != nil {
		return nil, err
	}
	if strings.TrimSpace(w.Login) == "" {
		return nil, &FieldError{Field: "Login", Reason: "empty"}
	}
	if w.SiteName != "" {
		if err := checkText("SiteName", w.SiteName, maxSiteNameLen); err != nil {
			return nil, err
		}
	}
	if w.LoginURL != "" {
		if err := checkLoginURL(w.LoginURL); err != nil {
			return nil, err
		}
	}
	msgID, err := normalizeMessageID(messageID, fromAddr.Address)
	if err != nil {
		return nil, err
	}

	subject := "Your account"
	if site := strings.TrimSpace(w.SiteName); site != "" {
		subject = "Your account on " + site
	}

	var b bytes.Buffer
	headers := [][2]string{
		{"Date", now.Format(time.RFC1123Z)},
		{"From", formatAddress(fromAddr)},
		{"To", formatAddress(toAddr)},
		{"Subject", mime.QEncoding.Encode("utf-8", subject)},
		{"Message-ID", msgID},
		{"Auto-Submitted", "auto-generated"},
		{"MIME-Version", "1.0"},
		{"Content-Type", "text/plain; charset=UTF-8"},
		{"Content-Transfer-Encoding", "quoted-printable"},
	}
	for _, h := range headers {
		line := h[0] + ": " + h[1]
		if strings.ContainsAny(line, "\r\n") {
			// Unreachable after the checks above; kept as the last guard
			// against header injection.
			return nil, &FieldError{Field: h[0], Reason: "contains CR or LF"}
		}
		if len(line) > maxHeaderLine {
			return nil, &FieldError{Field: h[0], Reason: "header line too long"}
		}
		b.WriteString(line)
		b.WriteString("\r\n")
	}
	b.WriteString("\r\n")

	qp := quotedprintable.NewWriter(&b)
	if _, err := qp.Write([]byte(welcomeBody(w))); err != nil {
		return nil, err
	}
	if err := qp.Close(); err != nil {
		return nil, err
	}
	if !bytes.HasSuffix(b.Bytes(), []byte("\r\n")) {
		b.WriteString("\r\n")
	}
	return b.Bytes(), nil
}

// welcomeBody is the plain text of the message, LF line endings (the
// quoted-printable writer turns them into CRLF).
func welcomeBody(w Welcome) string {
	site := strings.TrimSpace(w.SiteName)
	var b strings.Builder
	b.WriteString("Hello,\n\n")
	if site != "" {
		fmt.Fprintf(&b, "An account has been created for you on %s.\n\n", site)
	} else {
		b.WriteString("An account has been created for you.\n\n")
	}
	fmt.Fprintf(&b, "Username: %s\n", w.Login)
	if w.LoginURL != "" {
		fmt.Fprintf(&b, "Log in at: %s\n", w.LoginURL)
	}
	b.WriteString("\nYour password was set by the site and is not sent by email.\n")
	b.WriteString("To choose your own, use \"Lost your password?\" on the login page.\n")
	if site != "" {
		fmt.Fprintf(&b, "\n-- \n%s\n", site)
	}
	return b.String()
}

// ParseAddress parses one address, "user@example.com" or
// "Name <user@example.com>", for the named field. It refuses CR, LF and
// other control characters, over-long input, and non-ASCII addresses (they
// would need SMTPUTF8); display names may be any UTF-8.
func ParseAddress(field, s string) (*mail.Address, error) {
	if s == "" {
		return nil, &FieldError{Field: field, Reason: "empty"}
	}
	if len(s) > maxAddressLen {
		return nil, &FieldError{Field: field, Reason: "too long"}
	}
	if strings.ContainsAny(s, "\r\n") {
		return nil, &FieldError{Field: field, Reason: "contains CR or LF"}
	}
	if hasControl(s) {
		return nil, &FieldError{Field: field, Reason: "contains a control character"}
	}
	a, err := mail.ParseAddress(s)
	if err != nil {
		return nil, &FieldError{Field: field, Reason: "not an email address (" + strings.TrimPrefix(err.Error(), "mail: ") + ")"}
	}
	for i := 0; i < len(a.Address); i++ {
		if a.Address[i] >= utf8.RuneSelf {
			return nil, &FieldError{Field: field, Reason: "non-ASCII address is not supported"}
		}
	}
	return a, nil
}

// formatAddress is the header form: "Name <a@b>", or a bare "a@b".
func formatAddress(a *mail.Address) string {
	s := a.String()
	if a.Name == "" {
		s = strings.TrimSuffix(strings.TrimPrefix(s, "<"), ">")
	}
	return s
}

func checkText(field, s string, max int) error {
	if len(s) > max {
		return &FieldError{Field: field, Reason: "too long"}
	}
	if strings.ContainsAny(s, "\r\n") {
		return &FieldError{Field: field, Reason: "contains CR or LF"}
	}
	if hasControl(s) {
		return &FieldError{Field: field, Reason: "contains a control character"}
	}
	if !utf8.ValidString(s) {
		return &FieldError{Field: field, Reason: "not valid UTF-8"}
	}
	return nil
}

func checkLoginURL(s string) error {
	if err := checkText("LoginURL", s, maxURLLen); err != nil {
		return err
	}
	if strings.ContainsAny(s, " \t") {
		return &FieldError{Field: "LoginURL", Reason: "contains whitespace"}
	}
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return &FieldError{Field: "LoginURL", Reason: "want an absolute http or https URL"}
	}
	return nil
}

func hasControl(s string) bool {
	for _, r := range s {
		if unicode.IsControl(r) {
			return true
		}
	}
	return false
}

// normalizeMessageID returns "<id>"; an empty id becomes a random one on
// the sender's domain.
func normalizeMessageID(id, fromAddress string) (string, error) {
	if id == "" {
		var r [12]byte
		if _, err := rand.Read(r[:]); err != nil {
			return "", err
		}
		domain := fromAddress[strings.LastIndexByte(fromAddress, '@')+1:]
		return fmt.Sprintf("<%d.%s@%s>", time.Now().UnixNano(), hex.EncodeToString(r[:]), domain), nil
	}
	inner := strings.TrimSuffix(strings.TrimPrefix(id, "<"), ">")
	if len(inner) > 250 {
		return "", &FieldError{Field: "Message-ID", Reason: "too long"}
	}
	at := strings.IndexByte(inner, '@')
	if at <= 0 || at == len(inner)-1 || strings.Count(inner, "@") != 1 {
		return "", &FieldError{Field: "Message-ID", Reason: "want left@right"}
	}
	for i := 0; i < len(inner); i++ {
		c := inner[i]
		if c <= ' ' || c >= 0x7f || c == '<' || c == '>' || c == '"' || c == '\\' || c == '(' || c == ')' || c == ',' || c == ';' || c == ':' || c == '[' || c == ']' {
			return "", &FieldError{Field: "Message-ID", Reason: "contains a character not allowed in a Message-ID"}
		}
	}
	return "<" + inner + ">", nil
}
