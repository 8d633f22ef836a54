package mail

import (
	"bytes"
	"errors"
	"io"
	"mime"
	"mime/quotedprintable"
	"net/mail"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"
)

var testNow = time.Date(2025, 3, 4, 5, 6, 7, 0, time.FixedZone("CET", 3600))

// parsed is a composed message read back with net/mail.
type parsed struct {
	raw    []byte
	header mail.Header
	body   string // quoted-printable decoded, CRLF
}

func parse(t *testing.T, raw []byte) parsed {
	t.Helper()
	m, err := mail.ReadMessage(bytes.NewReader(raw))
	if err != nil {
		t.Fatalf("net/mail cannot read the message: %v\n%s", err, raw)
	}
	body, err := io.ReadAll(quotedprintable.NewReader(m.Body))
	if err != nil {
		t.Fatalf("body is not quoted-printable: %v", err)
	}
	return parsed{raw: raw, header: m.Header, body: string(body)}
}

func checkCRLF(t *testing.T, raw []byte) {
	t.Helper()
	for i, c := range raw {
		if c == '\n' && (i == 0 || raw[i-1] != '\r') {
			t.Fatalf("bare LF at byte %d", i)
		}
		if c == '\r' && (i+1 == len(raw) || raw[i+1] != '\n') {
			t.Fatalf("bare CR at byte %d", i)
		}
	}
	if !bytes.HasSuffix(raw, []byte("\r\n")) {
		t.Fatal("message does not end with CRLF")
	}
	for i, line := range bytes.Split(raw, []byte("\r\n")) {
		if len(line) > 998 {
			t.Fatalf("line %d is %d octets", i, len(line))
		}
	}
}

// passwordLine matches a line that would give a password's value.
var passwordLine = regexp.MustCompile(`(?im)^\s*(password|passwort|pass|pwd)\s*[:=]`)

func TestWelcomeHasNoPasswordField(t *testing.T) {
	typ := reflect.TypeFor[Welcome]()
	for i := range typ.NumField() {
		if name := strings.ToLower(typ.Field(i).Name); strings.Contains(name, "pass") || strings.Contains(name, "pwd") {
			t.Errorf("Welcome has a field %s: the welcome email must never carry a password", typ.Field(i).Name)
		}
	}
}

func TestCompose(t *testing.T) {
	longURL := "https://shop.example.com/wp-login.php?redirect_to=" + strings.Repeat("x", 150) + "&reauth=1"
	tests := []struct {
		name        string
		from        string
		w           Welcome
		id          string
		wantSubject string
		wantTo      string
		wantFrom    string
		wantID      string
		wantBody    []string
		notInBody   []string
	}{
		{
			name:        "full",
			from:        "Café Shop <noreply@shop.example.com>",
			w:           Welcome{To: "Jane Doe <jane@example.org>", Login: "jane.doe", LoginURL: "https://shop.example.com/wp-login.php", SiteName: "Café Shop"},
			id:          "abc123@shop.example.com",
			wantSubject: "Your account on Café Shop",
			wantTo:      "jane@example.org",
			wantFrom:    "noreply@shop.example.com",
			wantID:      "<abc123@shop.example.com>",
			wantBody: []string{
				"Hello,", "An account has been created for you on Café Shop.",
				"Username: jane.doe", "Log in at: https://shop.example.com/wp-login.php",
				`"Lost your password?"`, "set by the site",
			},
		},
		{
			name:        "minimal",
			from:        "noreply@example.com",
			w:           Welcome{To: "bob@example.net", Login: "bob"},
			id:          "<x@y>",
			wantSubject: "Your account",
			wantTo:      "bob@example.net",
			wantFrom:    "noreply@example.com",
			wantID:      "<x@y>",
			wantBody:    []string{"Username: bob", "An account has been created for you.", `"Lost your password?"`},
			notInBody:   []string{"Log in at", "-- "},
		},
		{
			name:        "long URL survives quoted-printable wrapping",
			from:        "noreply@example.com",
			w:           Welcome{To: "bob@example.net", Login: "bob", LoginURL: longURL},
			id:          "1@example.com",
			wantSubject: "Your account",
			wantTo:      "bob@example.net",
			wantFrom:    "noreply@example.com",
			wantID:      "<1@example.com>",
			wantBody:    []string{"Log in at: " + longURL},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			raw, err := Compose(tt.from, tt.w, testNow, tt.id)
			if err != nil {
				t.Fatal(err)
			}
			checkCRLF(t, raw)
			// Quoted-printable keeps the body 7-bit with lines of at most 76.
			_, body, _ := bytes.Cut(raw, []byte("\r\n\r\n"))
			for _, line := range bytes.Split(body, []byte("\r\n")) {
				if len(line) > 76 {
					t.Errorf("body line longer than 76: %q", line)
				}
			}
			if i := bytes.IndexFunc(raw, func(r rune) bool { return r > 0x7e }); i >= 0 {
				t.Errorf("message is not 7-bit at %d", i)
			}

			p := parse(t, raw)
			h := p.header
			date, err := h.Date()
			if err != nil || !date.Equal(testNow) {
				t.Errorf("Date = %v, %v; want %v", date, err, testNow)
			}
			if a, err := mail.ParseAddress(h.Get("From")); err != nil || a.Address != tt.wantFrom {
				t.Errorf("From = %q (%v)", h.Get("From"), err)
			}
			if a, err := mail.ParseAddress(h.Get("To")); err != nil || a.Address != tt.wantTo {
				t.Errorf("To = %q (%v)", h.Get("To"), err)
			}
			subject, err := new(mime.WordDecoder).DecodeHeader(h.Get("Subject"))
			if err != nil || subject != tt.wantSubject {
				t.Errorf("Subject = %q (%v), want %q", subject, err, tt.wantSubject)
			}
			if got := h.Get("Message-ID"); got != tt.wantID {
				t.Errorf("Message-ID = %q, want %q", got, tt.wantID)
			}
			if got := h.Get("MIME-Version"); got != "1.0" {
				t.Errorf("MIME-Version = %q", got)
			}
			mt, params, err := mime.ParseMediaType(h.Get("Content-Type"))
			if err != nil || mt != "text/plain" || !strings.EqualFold(params["charset"], "utf-8") {
				t.Errorf("Content-Type = %q", h.Get("Content-Type"))
			}
			if got := h.Get("Content-Transfer-Encoding"); got != "quoted-printable" {
				t.Errorf("Content-Transfer-Encoding = %q", got)
			}
			for _, want := range tt.wantBody {
				if !strings.Contains(p.body, want) {
					t.Errorf("body lacks %q:\n%s", want, p.body)
				}
			}
			for _, no := range tt.notInBody {
				if strings.Contains(p.body, no) {
					t.Errorf("body has %q:\n%s", no, p.body)
				}
			}
			if passwordLine.MatchString(p.body) {
				t.Errorf("body has a password line:\n%s", p.body)
			}
		})
	}
}

func TestComposeGeneratesMessageID(t *testing.T) {
	a, err := Compose("noreply@shop.example.com", Welcome{To: "a@example.org", Login: "a"}, testNow, "")
	if err != nil {
		t.Fatal(err)
	}
	b, err := Compose("noreply@shop.example.com", Welcome{To: "a@example.org", Login: "a"}, testNow, "")
	if err != nil {
		t.Fatal(err)
	}
	ida, idb := parse(t, a).header.Get("Message-ID"), parse(t, b).header.Get("Message-ID")
	if !regexp.MustCompile(`^<[0-9]+\.[0-9a-f]{24}@shop\.example\.com>$`).MatchString(ida) {
		t.Errorf("Message-ID = %q", ida)
	}
	if ida == idb {
		t.Errorf("two messages share Message-ID %q", ida)
	}
}

func TestComposeRejects(t *testing.T) {
	ok := Welcome{To: "jane@example.org", Login: "jane", LoginURL: "https://example.com/wp-login.php", SiteName: "Shop"}
	with := func(f func(*Welcome)) Welcome { w := ok; f(&w); return w }
	tests := []struct {
		name  string
		from  string
		w     Welcome
		id    string
		field string
	}{
		{"To header injection", "", with(func(w *Welcome) { w.To = "jane@example.org\r\nBcc: all@example.com" }), "", "To"},
		{"To bare LF", "", with(func(w *Welcome) { w.To = "jane@example.org\nBcc: all@example.com" }), "", "To"},
		{"To in display name", "", with(func(w *Welcome) { w.To = "\"Jane\r\nBcc: x@y\" <jane@example.org>" }), "", "To"},
		{"To not an address", "", with(func(w *Welcome) { w.To = "jane" }), "", "To"},
		{"To empty", "", with(func(w *Welcome) { w.To = "" }), "", "To"},
		{"To two addresses", "", with(func(w *Welcome) { w.To = "a@example.org, b@example.org" }), "", "To"},
		{"To non-ASCII address", "", with(func(w *Welcome) { w.To = "jäne@example.org" }), "", "To"},
		{"To control character", "", with(func(w *Welcome) { w.To = "jane\x00@example.org" }), "", "To"},
		{"From injection", "noreply@example.com\r\nBcc: x@example.com", ok, "", "From"},
		{"From not an address", "noreply", ok, "", "From"},
		{"Login injection", "", with(func(w *Welcome) { w.Login = "jane\r\nBcc: x@example.com" }), "", "Login"},
		{"Login LF", "", with(func(w *Welcome) { w.Login = "jane\n" }), "", "Login"},
		{"Login empty", "", with(func(w *Welcome) { w.Login = " " }), "", "Login"},
		{"Login too long", "", with(func(w *Welcome) { w.Login = strings.Repeat("j", 201) }), "", "Login"},
		{"Login invalid UTF-8", "", with(func(w *Welcome) { w.Login = "j\xffane" }), "", "Login"},
		{"SiteName injection", "", with(func(w *Welcome) { w.SiteName = "Shop\r\nBcc: x@example.com" }), "", "SiteName"},
		{"LoginURL injection", "", with(func(w *Welcome) { w.LoginURL = "https://example.com/\r\nBcc: x" }), "", "LoginURL"},
		{"LoginURL javascript", "", with(func(w *Welcome) { w.LoginURL = "javascript:alert(1)" }), "", "LoginURL"},
		{"LoginURL relative", "", with(func(w *Welcome) { w.LoginURL = "/wp-login.php" }), "", "LoginURL"},
		{"Message-ID injection", "", ok, "a@b>\r\nBcc: x@y", "Message-ID"},
		{"Message-ID without @", "", ok, "abc", "Message-ID"},
		{"Message-ID with space", "", ok, "a b@c", "Message-ID"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			from := tt.from
			if from == "" {
				from = "noreply@example.com"
			}
			msg, err := Compose(from, tt.w, testNow, tt.id)
			var fe *FieldError
			if !errors.As(err, &fe) {
				t.Fatalf("Compose = %q, %v; want a *FieldError", msg, err)
			}
			if fe.Field != tt.field {
				t.Errorf("Field = %q, want %q (%v)", fe.Field, tt.field, err)
			}
			if msg != nil {
				t.Error("a message came back with the error")
			}
		})
	}
}
