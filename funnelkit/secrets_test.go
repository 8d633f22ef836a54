package funnelkit_test

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/usersync/usersync/funnelkit"
)

// secretForms are the ways the password could leak: as given, without its
// spaces, escaped, and inside the Basic token.
func secretForms() []string {
	return []string{
		testPassword,
		strings.ReplaceAll(testPassword, " ", ""),
		url.QueryEscape(testPassword),
		url.PathEscape(testPassword),
		base64.StdEncoding.EncodeToString([]byte(testUser + ":" + testPassword)),
	}
}

func assertNoSecret(t *testing.T, what, text string) {
	t.Helper()
	for _, s := range secretForms() {
		if strings.Contains(text, s) {
			t.Errorf("%s holds the password (%q): %s", what, s, text)
		}
	}
}

// echoing are sites that put the credentials they received into their answer.
func echoing() []failure {
	echo := func(status int, contentType, format string) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			_, pass, _ := r.BasicAuth()
			respond(status, contentType, strings.ReplaceAll(format, "PW", pass+" "+r.Header.Get("Authorization")))(w, r)
		}
	}
	return []failure{
		{name: "JSON error message", handler: echo(400, ctJSON, `{"code":"rest_invalid","message":"bad: PW","data":{"status":400}}`)},
		{name: "JSON error code", handler: echo(403, ctJSON, `{"code":"PW","message":"no","data":{"status":403}}`)},
		{name: "401 message", handler: echo(401, ctJSON, `{"code":"incorrect_password","message":"wrong PW"}`)},
		{name: "404 message", handler: echo(404, ctJSON, `{"code":404,"message":"No contact PW"}`)},
		{name: "500 text", handler: echo(500, "text/plain", "crash PW")},
		{name: "404 text", handler: echo(404, "text/plain", "nothing for PW")},
		{name: "HTML title", handler: echo(403, ctHTML, "<html><head><title>PW</title></head></html>")},
		{name: "PHP notice", handler: echo(200, ctJSON, "<b>Notice</b>: PW {}")},
		{name: "invalid JSON", handler: echo(200, ctJSON, "PW")},
		{name: "tag id", handler: echo(200, ctJSON, `{"code":200,"result":{"id":12,"tags":[{"ID":"PW"}]},"result_list":[]}`)},
		{name: "contact id", handler: echo(200, ctJSON, `{"code":200,"result":{"id":"PW"}}`)},
		{name: "tag list item", handler: echo(200, ctJSON, `{"code":200,"result":["PW"]}`)},
		{name: "redirect", handler: func(w http.ResponseWriter, r *http.Request) {
			_, pass, _ := r.BasicAuth()
			w.Header().Set("Location", "/x/"+url.PathEscape(pass)+"/"+pass)
			w.WriteHeader(http.StatusFound)
		}},
		{name: "redirect with credentials", handler: func(w http.ResponseWriter, r *http.Request) {
			_, pass, _ := r.BasicAuth()
			w.Header().Set("Location", "http://u:"+url.QueryEscape(pass)+"@127.0.0.1:1/?p="+url.QueryEscape(pass))
			w.WriteHeader(http.StatusTemporaryRedirect)
		}},
	}
}

// TestSecrets_PasswordNeverInErrors calls every method against every way a
// site can fail, and sites that echo the credentials back, and checks that
// no form of the password is in the error, however it is printed.
func TestSecrets_PasswordNeverInErrors(t *testing.T) {
	methods := map[string]func(c *funnelkit.Client, t *testing.T) error{
		"Contact": func(c *funnelkit.Client, t *testing.T) error { _, err := c.Contact(ctx(t), 12); return err },
		"FindContact": func(c *funnelkit.Client, t *testing.T) error {
			_, _, err := c.FindContact(ctx(t), "a@example.com")
			return err
		},
		"Tags": func(c *funnelkit.Client, t *testing.T) error { _, err := c.Tags(ctx(t)); return err },
		"SetFields": func(c *funnelkit.Client, t *testing.T) error {
			return c.SetFields(ctx(t), 12, map[string]string{"7": "x"})
		},
	}
	failed := 0
	for _, f := range append(failures(), echoing()...) {
		t.Run(f.name, func(t *testing.T) {
			c := f.client(t)
			for name, call := range methods {
				err := call(c, t)
				if err == nil {
					continue
				}
				failed++
				var fe *funnelkit.Error
				if !errors.As(err, &fe) {
					t.Errorf("%s: %T is not a *funnelkit.Error", name, err)
				}
				for _, text := range []string{err.Error(), fmt.Sprintf("%v", err), fmt.Sprintf("%+v", err),
					fmt.Sprintf("%#v", err), fmt.Sprintf("%#v", *fe), fe.Message} {
					assertNoSecret(t, name+" error", text)
				}
				for e := errors.Unwrap(err); e != nil; e = errors.Unwrap(e) {
					assertNoSecret(t, name+" wrapped error", e.Error())
				}
			}
		})
	}
	if failed < 3*len(failures()) {
		t.Errorf("only %d calls failed: the test does not exercise enough failures", failed)
	}
}

func TestSecrets_ConfigAndClientNeverPrintThePassword(t *testing.T) {
	cfg := funnelkit.Config{BaseURL: "https://shop.example.com", User: testUser, Password: testPassword}
	c, err := funnelkit.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	var texts []string
	for _, v := range []any{cfg, &cfg, c, *c} {
		for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%d", "%x", "%q", "%T"} {
			texts = append(texts, fmt.Sprintf(verb, v))
		}
	}
	var logs bytes.Buffer
	for _, h := range []slog.Handler{slog.NewJSONHandler(&logs, nil), slog.NewTextHandler(&logs, nil)} {
		slog.New(h).Info("start", "funnelkit", cfg, "client", c, "ptr", &cfg)
	}
	texts = append(texts, logs.String())
	for _, text := range texts {
		assertNoSecret(t, "output", text)
	}
	if s := cfg.String(); !strings.Contains(s, "[redacted]") || !strings.Contains(s, "shop.example.com") || !strings.Contains(s, testUser) {
		t.Errorf("String() = %s", s)
	}
	if !strings.Contains(logs.String(), `"password":"[redacted]"`) {
		t.Errorf("log = %s", logs.String())
	}
	if s := (funnelkit.Config{}).String(); !strings.Contains(s, "Password: (empty)") {
		t.Errorf("empty password shows as %s", s)
	}
	withCreds := funnelkit.Config{BaseURL: "https://bot:" + url.QueryEscape(testPassword) + "@shop.example.com/", Password: testPassword}
	assertNoSecret(t, "String of a URL with credentials", withCreds.String())
}
