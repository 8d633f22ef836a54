package http

import (
	"context"
	nethttp "net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/usersync/usersync/domain"
	"github.com/usersync/usersync/domain/command"
)

// stubRetries stands in for the process managers' Retry (tested in
// domain/command): it records by in the contact's stream as they do, and
// refuses what they would refuse.
type stubRetries struct {
	store Store
	mu    sync.Mutex
	asked []string
}

func (s *stubRetries) retry(ctx context.Context, kind string, id domain.ContactID, by domain.OperatorActed, action string) error {
	s.mu.Lock()
	s.asked = append(s.asked, kind+" "+id.String())
	s.mu.Unlock()
	if id == 10 {
		return command.ErrKeyDestroyed
	}
	by.Action = action
	raw, err := domain.Encode(domain.Envelope{Event: by, OccurredAt: time.Unix(1700000100, 0)})
	if err != nil {
		return err
	}
	_, err = s.store.Append(ctx, id.Stream(), domain.AnyVersion(), raw)
	return err
}

func (s *stubRetries) RetryPasswordReturn(ctx context.Context, id domain.ContactID, by domain.OperatorActed) error {
	return s.retry(ctx, "password", id, by, domain.ActionRetryPasswordReturn)
}

func (s *stubRetries) RetryWelcomeEmail(ctx context.Context, id domain.ContactID, by domain.OperatorActed) error {
	return s.retry(ctx, "welcome", id, by, domain.ActionRetryWelcomeEmail)
}

// queueGiven appends a pending (failed once) return for contact 9, a
// given-up one for contact 10, a given-up welcome mail for contact 11, and
// applies the log to the views.
func queueGiven(t *testing.T, c *Config) {
	t.Helper()
	ctx := context.Background()
	at := time.Unix(1700000000, 0).UTC()
	given := []struct {
		id     domain.ContactID
		events []domain.Event
	}{
		{9, []domain.Event{domain.PasswordIssued{KeyID: "k9", Field: "7", Sealed: []byte("s")}, domain.PasswordReturnFailed{KeyID: "k9", Field: "7", Attempt: 1, Error: "funnelkit 503", NextAttemptAt: at.Add(time.Hour)}}},
		{10, []domain.Event{domain.PasswordIssued{KeyID: "k10", Field: "7", Sealed: []byte("s")}, domain.PasswordReturnFailed{KeyID: "k10", Field: "7", Attempt: 5, Error: "funnelkit 401", GaveUp: true}}},
		{11, []domain.Event{domain.UserCreated{UserID: "u11", Role: "subscriber", Login: "eve", Email: "eve@example.com", WelcomeEmail: true}, domain.WelcomeEmailFailed{To: "eve@example.com", Attempt: 3, Error: "smtp 550", GaveUp: true}}},
	}
	for _, g := range given {
		for _, e := range g.events {
			raw, err := domain.Encode(domain.Envelope{Event: e, OccurredAt: at})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := c.Store.Append(ctx, g.id.Stream(), domain.AnyVersion(), raw); err != nil {
				t.Fatal(err)
			}
		}
	}
	catchUp(t, c)
}

// catchUp applies the whole log to the views.
func catchUp(t *testing.T, c *Config) {
	t.Helper()
	ctx := context.Background()
	from, err := c.Views.Position("users")
	if err != nil {
		t.Fatal(err)
	}
	recs, err := c.Store.ReadAll(ctx, from, 10_000)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Views.HandleBatch(ctx, recs); err != nil {
		t.Fatal(err)
	}
}

// Given a return waiting on its next attempt, a given-up one and a
// given-up welcome mail, the queue page lists them with Retry where it can
// be, says why not for the given-up return; a retry needs the CSRF token,
// goes to the process manager, and shows in the contact's timeline and in
// the operator stream.
func TestConsole_Queue_ListsAndRetries(t *testing.T) {
	var cfg *Config
	stub := &stubRetries{}
	b := newBrowser(t, consoleServer(t, func(c *Config) {
		queueGiven(t, c)
		stub.store, c.Retries, cfg = c.Store, stub, c
	}))
	csrf := b.signIn()
	if _, ops := b.do("GET", "/ui/ops", nil); !strings.Contains(ops, `href="/ui/ops/queue"`) {
		t.Error("the operations page does not link to the queue")
	}
	resp, page := b.do("GET", "/ui/ops/queue", nil)
	if resp.StatusCode != nethttp.StatusOK || len(page) > 100_000 {
		t.Fatalf("GET /ui/ops/queue: %d, %d bytes", resp.StatusCode, len(page))
	}
	for _, want := range []string{"funnelkit 503", "funnelkit 401", "smtp 550", "eve@example.com",
		`aria-label="Retry the password return of contact 9"`, `aria-label="Retry the welcome mail of contact 11"`,
		"Given up: its key is destroyed, it cannot be retried"} {
		if !strings.Contains(page, want) {
			t.Errorf("the queue page does not show %q", want)
		}
	}
	if strings.Contains(page, "Retry the password return of contact 10") {
		t.Error("a given-up return has a Retry button")
	}

	for _, tc := range []struct {
		name string
		form url.Values
		want int
	}{
		{"without the CSRF token", url.Values{"kind": {"password"}, "contact_id": {"9"}}, nethttp.StatusForbidden},
		{"a given-up return", url.Values{"csrf": {csrf}, "kind": {"password"}, "contact_id": {"10"}}, nethttp.StatusConflict},
		{"not a contact", url.Values{"csrf": {csrf}, "kind": {"password"}, "contact_id": {"x"}}, nethttp.StatusBadRequest},
		{"a pending return", url.Values{"csrf": {csrf}, "kind": {"password"}, "contact_id": {"9"}}, nethttp.StatusSeeOther},
		{"a given-up mail", url.Values{"csrf": {csrf}, "kind": {"welcome"}, "contact_id": {"11"}}, nethttp.StatusSeeOther},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if resp, body := b.do("POST", "/ui/ops/queue/retry", tc.form); resp.StatusCode != tc.want {
				t.Errorf("POST /ui/ops/queue/retry: %d, want %d\n%s", resp.StatusCode, tc.want, body)
			}
		})
	}
	if got := strings.Join(stub.asked, ", "); got != "password 10, password 9, welcome 11" {
		t.Errorf("the process managers were asked %q, want password 10, password 9, welcome 11", got)
	}

	// Then the contact's timeline shows the retry in words, and the views
	// have the mail pending again, the return due now.
	_, user := b.do("GET", "/ui/users/9", nil)
	if !strings.Contains(user, "Operator retried the password return (admin token, from 127.0.0.1)") {
		t.Errorf("contact 9's timeline does not show the retry:\n%s", user)
	}
	catchUp(t, cfg)
	if m, _, err := cfg.Views.Welcome.Get(context.Background(), 11); err != nil || m.Status != "pending" {
		t.Errorf("welcome mail of 11 after the retry: %+v, %v; want pending", m, err)
	}
	if p, _, err := cfg.Views.Passwords.Get(context.Background(), 9); err != nil || !p.NextAttemptAt.Equal(time.Unix(1700000100, 0)) {
		t.Errorf("password return of 9 after the retry: %+v, %v; want due at the retry", p, err)
	}
	_, ops := b.do("GET", "/ui/ops", nil)
	for _, want := range []string{"Operator retried the password return (admin token, from 127.0.0.1): asked", "Operator retried the password return (admin token, from 127.0.0.1): refused: " + command.ErrKeyDestroyed.Error()} {
		if !strings.Contains(ops, want) {
			t.Errorf("the operations page does not list %q", want)
		}
	}
}

// Given a parked event of contact 7, when an operator skips it, the skip
// shows in contact 7's timeline; the sign-in touched no contact and stays
// out of it.
func TestConsole_ParkedSkip_ShowsInTheContactsTimeline(t *testing.T) {
	b := newBrowser(t, consoleServer(t, func(c *Config) {
		pe := domain.ParkedEvent{Handler: "welcome_email", Position: 2, Stream: domain.ContactID(7).Stream(), Version: 2, Type: "RoleChanged", Error: "boom", ParkedAt: time.Unix(1700000000, 0)}
		if err := c.Views.Park(context.Background(), pe); err != nil {
			t.Fatal(err)
		}
	}))
	csrf := b.signIn()
	if resp, body := b.do("POST", "/ui/ops/parked/skip", url.Values{"csrf": {csrf}, "handler": {"welcome_email"}, "position": {"2"}}); resp.StatusCode != nethttp.StatusSeeOther {
		t.Fatalf("skip: %d\n%s", resp.StatusCode, body)
	}
	_, page := b.do("GET", "/ui/users/7", nil)
	if !strings.Contains(page, "Operator parked skip of welcome_email event 2 (contact-7 version 2) from 127.0.0.1 with the admin token: skipped") {
		t.Errorf("contact 7's timeline does not show the skip:\n%s", page)
	}
	if strings.Contains(page, "Operator sign in") {
		t.Error("contact 7's timeline shows an action that touched no contact")
	}
}
