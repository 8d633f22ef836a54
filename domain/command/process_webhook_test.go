package command

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/usersync/usersync/domain"
)

var (
	vip   = domain.Tag{ID: 1, Name: "VIP"}
	trial = domain.Tag{ID: 2, Name: "Trial"}
)

// TestProcessWebhook is the use case's specification: given a contact's
// stream and the CRM's answer, when the oldest open webhook is processed,
// then these events are appended to the contact's stream and this is the
// outcome.
func TestProcessWebhook(t *testing.T) {
	const id = domain.ContactID(7)
	tests := []struct {
		name   string
		given  func(w *world)
		action string
		params map[string]string
		// then
		appended []string
		status   string
		message  string
		kind     error // the Outcome.Err kind, nil for none
		check    func(t *testing.T, w *world, appended []domain.Event)
	}{
		{
			name:     "add a new contact creates the user with tags, meta and a password to return",
			given:    func(w *world) { w.crm.set(contact(id, "Ada@Example.com", vip)) },
			action:   domain.ActionAdd,
			params:   map[string]string{"send_notification": "yes"},
			appended: []string{domain.TypeUserCreated, domain.TypeTagsUpdated, domain.TypeMetaPulled, domain.TypePasswordIssued, domain.TypeWebhookProcessed},
			status:   StatusProcessed, message: "User created",
			check: func(t *testing.T, w *world, appended []domain.Event) {
				c := find[domain.UserCreated](t, appended)
				if c.Email != "Ada@Example.com" || c.Login != "Ada@Example.com" || c.Role != "subscriber" || !c.WelcomeEmail || c.PasswordHash != "hash(generated-1)" {
					t.Errorf("UserCreated = %+v", c)
				}
				issued := find[domain.PasswordIssued](t, appended)
				if issued.Field != "7" || w.secrets.keys[issued.KeyID] != "generated-1" {
					t.Errorf("PasswordIssued = %+v, keys %v", issued, w.secrets.keys)
				}
				if strings.Contains(string(issued.Sealed), "generated-1") {
					t.Error("the password is recorded in the clear")
				}
				for _, stream := range []string{domain.EmailStream("ada@example.com"), domain.LoginStream("Ada@Example.com")} {
					if got := types(w.events(stream, 0)); len(got) != 1 {
						t.Errorf("%s = %v, want one reservation", stream, got)
					}
				}
			},
		},
		{
			name:     "add with a role the policy refuses gives the default role and says so",
			given:    func(w *world) { w.crm.set(contact(id, "ada@example.com")) },
			action:   domain.ActionAdd,
			params:   map[string]string{"role": "administrator"},
			appended: []string{domain.TypeUserCreated, domain.TypeMetaPulled, domain.TypePasswordIssued, domain.TypeWebhookProcessed},
			status:   StatusProcessed, message: "User created (role refused: administrator is never granted by a webhook; gave subscriber)",
		},
		{
			name:     "add for a contact without email fails the import",
			given:    func(w *world) { w.crm.set(contact(id, "")) },
			action:   domain.ActionAdd,
			appended: []string{domain.TypeWebhookFailed},
			status:   StatusFailed, message: "Import user failed: No email provided for imported user", kind: domain.ErrImportFailed,
			check: func(t *testing.T, w *world, appended []domain.Event) {
				if f := find[domain.WebhookFailed](t, appended); f.Status != 500 {
					t.Errorf("recorded status %d, want 500", f.Status)
				}
			},
		},
		{
			name:     "the CRM knows no such contact: the webhook fails",
			action:   domain.ActionAdd,
			appended: []string{domain.TypeWebhookFailed},
			status:   StatusFailed, message: "read contact from FunnelKit: FunnelKit answered 404: no such contact", kind: domain.ErrCRMRefused,
			check: func(t *testing.T, w *world, appended []domain.Event) {
				if f := find[domain.WebhookFailed](t, appended); f.Status != 502 || f.Action != domain.ActionAdd {
					t.Errorf("WebhookFailed = %+v, want status 502", f)
				}
			},
		},
		{
			name:     "the CRM answers another contact: the webhook fails",
			given:    func(w *world) { w.crm.contacts[id] = contact(8, "ada@example.com") },
			action:   domain.ActionAdd,
			appended: []string{domain.TypeWebhookFailed},
			status:   StatusFailed, message: "FunnelKit answered contact 8 for contact 7", kind: domain.ErrCRMRefused,
		},
		{
			name:     "the CRM is down: the webhook is kept and retried",
			given:    func(w *world) { w.crm.contactErr = errCRMDown },
			action:   domain.ActionAdd,
			appended: []string{domain.TypeWebhookRetrying},
			status:   StatusRetrying, message: "FunnelKit is unavailable; the webhook is queued and retried: FunnelKit did not answer within 10s", kind: domain.ErrCRMUnavailable,
			check: func(t *testing.T, w *world, appended []domain.Event) {
				r := find[domain.WebhookRetrying](t, appended)
				if r.Attempt != 1 || !r.NextAttemptAt.Equal(t0.Add(time.Second)) {
					t.Errorf("WebhookRetrying = %+v, want attempt 1 in 1s", r)
				}
				if !w.state(id).Open("wh1") {
					t.Error("the webhook is closed")
				}
			},
		},
		{
			name:     "an invalid parameter fails the webhook as the sender's mistake",
			action:   domain.ActionUpdate,
			params:   map[string]string{"async": "maybe"},
			appended: []string{domain.TypeWebhookFailed},
			status:   StatusFailed, kind: domain.ErrInvalidRequest,
			check: func(t *testing.T, w *world, appended []domain.Event) {
				if f := find[domain.WebhookFailed](t, appended); f.Status != 400 || !strings.Contains(f.Reason, "async") {
					t.Errorf("WebhookFailed = %+v, want status 400 naming async", f)
				}
			},
		},
		{
			name:     "update for a contact without a user is ignored",
			given:    func(w *world) { w.crm.set(contact(id, "ada@example.com")) },
			action:   domain.ActionUpdate,
			appended: []string{domain.TypeWebhookIgnored},
			status:   StatusIgnored, message: "No matching user found",
		},
		{
			name: "update_tags replaces the tags with the contact's",
			given: func(w *world) {
				w.user(id, "u1", "ada@example.com", trial)
				w.crm.set(contact(id, "ada@example.com", vip))
			},
			action:   domain.ActionUpdateTags,
			appended: []string{domain.TypeTagsUpdated, domain.TypeWebhookProcessed},
			status:   StatusProcessed, message: "User updated",
			check: func(t *testing.T, w *world, appended []domain.Event) {
				u := find[domain.TagsUpdated](t, appended)
				if !slices.Equal(u.Added, []domain.Tag{vip}) || !slices.Equal(u.Removed, []domain.Tag{trial}) {
					t.Errorf("TagsUpdated = %+v", u)
				}
			},
		},
		{
			name: "update_tags with a tags param resolves names and ids against the catalogue",
			given: func(w *world) {
				w.user(id, "u1", "ada@example.com")
				w.crm.tags = []domain.Tag{vip, trial}
			},
			action:   domain.ActionUpdateTags,
			params:   map[string]string{"tags": "VIP, 2"},
			appended: []string{domain.TypeTagsUpdated, domain.TypeWebhookProcessed},
			status:   StatusProcessed, message: "User updated",
		},
		{
			name: "update_tags with an unknown tag fails as the sender's mistake",
			given: func(w *world) {
				w.user(id, "u1", "ada@example.com")
				w.crm.tags = []domain.Tag{vip}
			},
			action:   domain.ActionUpdateTags,
			params:   map[string]string{"tags": "Gold"},
			appended: []string{domain.TypeWebhookFailed},
			status:   StatusFailed, message: `tags: no FunnelKit tag is named "Gold" (use tag ids or exact names)`, kind: domain.ErrInvalidRequest,
		},
		{
			name: "the tag catalogue cannot be read: the webhook is retried",
			given: func(w *world) {
				w.user(id, "u1", "ada@example.com")
				w.crm.tagsErr = errCRMDown
			},
			action:   domain.ActionUpdateTags,
			params:   map[string]string{"tags": "VIP"},
			appended: []string{domain.TypeWebhookRetrying},
			status:   StatusRetrying, kind: domain.ErrCRMUnavailable,
		},
		{
			name: "the same tags again change nothing",
			given: func(w *world) {
				w.user(id, "u1", "ada@example.com", vip)
				w.crm.set(contact(id, "ada@example.com", vip))
			},
			action:   domain.ActionUpdateTags,
			appended: []string{domain.TypeWebhookProcessed},
			status:   StatusProcessed, message: "No changes",
		},
		{
			name: "update pulls meta, the role asked for and a changed email, and frees the old address",
			given: func(w *world) {
				w.user(id, "u1", "ada@example.com")
				w.crm.set(contact(id, "ada@new.example"))
			},
			action:   domain.ActionUpdate,
			params:   map[string]string{"role": "editor"},
			appended: []string{domain.TypeMetaPulled, domain.TypeMetaPulled, domain.TypeRoleChanged, domain.TypeWebhookProcessed},
			status:   StatusProcessed, message: "User updated",
			check: func(t *testing.T, w *world, _ []domain.Event) {
				u := w.state(id).User
				if u.Email != "ada@new.example" || u.Role != "editor" || u.Meta["billing_phone"] != "555-1" {
					t.Errorf("user = %+v", u)
				}
				if got := types(w.events(domain.EmailStream("ada@example.com"), 1)); !slices.Equal(got, []string{domain.TypeEmailReleased}) {
					t.Errorf("old address stream got %v, want it released", got)
				}
				if got := types(w.events(domain.EmailStream("ada@new.example"), 0)); !slices.Equal(got, []string{domain.TypeEmailReserved}) {
					t.Errorf("new address stream = %v, want it reserved", got)
				}
			},
		},
		{
			name: "update to an address another user has keeps the email and says so",
			given: func(w *world) {
				w.user(id, "u1", "ada@example.com")
				w.user(9, "u9", "bob@example.com")
				w.crm.set(contact(id, "bob@example.com"))
			},
			action:   domain.ActionUpdate,
			appended: []string{domain.TypeMetaPulled, domain.TypeWebhookProcessed},
			status:   StatusProcessed, message: "User updated (email not changed: bob@example.com belongs to another user)",
		},
		{
			name: "add for an address another contact's user has moves that user here",
			given: func(w *world) {
				w.user(9, "u9", "ada@example.com", vip)
				w.crm.set(contact(id, "ada@example.com", vip))
			},
			action:   domain.ActionAdd,
			appended: []string{domain.TypeUserLinked, domain.TypeMetaPulled, domain.TypeWebhookProcessed},
			status:   StatusProcessed, message: "Linked the existing user with this email",
			check: func(t *testing.T, w *world, _ []domain.Event) {
				if u := w.state(id).User; u == nil || u.UserID != "u9" {
					t.Fatalf("contact 7's user = %+v, want u9", u)
				}
				if u := w.state(9).User; u != nil {
					t.Errorf("contact 9 still has user %+v", u)
				}
				for _, stream := range []string{domain.EmailStream("ada@example.com"), domain.LoginStream("ada@example.com")} {
					r, err := w.proc.readReservation(context.Background(), stream)
					if err != nil || r.contact != id || r.userID != "u9" {
						t.Errorf("%s held by %+v (%v), want contact 7", stream, r, err)
					}
				}
			},
		},
		{
			// Claims across nodes: an attempt that lost its race may leave a
			// claim with its own user id behind.
			name: "add for an address whose claim names the holder with a lost attempt's user id still links",
			given: func(w *world) {
				w.user(9, "u9", "ada@example.com")
				w.given(domain.EmailStream("ada@example.com"), domain.EmailReserved{Email: "ada@example.com", ContactID: 9, UserID: "lost-attempt"})
				w.crm.set(contact(id, "ada@example.com"))
			},
			action:   domain.ActionAdd,
			appended: []string{domain.TypeUserLinked, domain.TypeMetaPulled, domain.TypeWebhookProcessed},
			status:   StatusProcessed, message: "Linked the existing user with this email",
			check: func(t *testing.T, w *world, appended []domain.Event) {
				if l := find[domain.UserLinked](t, appended); l.UserID != "u9" {
					t.Errorf("linked %q, want u9", l.UserID)
				}
			},
		},
		{
			name: "add for an address whose user is moving to another contact links it from there",
			given: func(w *world) {
				// contact 8 took u9 from contact 9 and has not claimed the
				// reservations yet (another node, half way through)
				w.user(9, "u9", "ada@example.com")
				w.given(domain.ContactID(8).Stream(), domain.UserLinked{UserID: "u9", ContactID: 8, FromContactID: 9, Login: "ada@example.com", Email: "ada@example.com", Role: "subscriber"})
				w.given(domain.ContactID(9).Stream(), domain.UserUnlinked{UserID: "u9", ToContactID: 8})
				w.crm.set(contact(id, "ada@example.com"))
			},
			action:   domain.ActionAdd,
			appended: []string{domain.TypeUserLinked, domain.TypeMetaPulled, domain.TypeWebhookProcessed},
			status:   StatusProcessed, message: "Linked the existing user with this email",
			check: func(t *testing.T, w *world, appended []domain.Event) {
				if l := find[domain.UserLinked](t, appended); l.UserID != "u9" || l.FromContactID != 8 {
					t.Errorf("linked %q from contact %d, want u9 from 8", l.UserID, l.FromContactID)
				}
				if u := w.state(8).User; u != nil {
					t.Errorf("contact 8 keeps user %+v", u)
				}
			},
		},
		{
			name: "add for an address whose user two concurrent moves left on no contact links it again instead of creating one",
			given: func(w *world) {
				// contacts 8 and 9 unlinked each other, each on its own node
				w.user(9, "u9", "ada@example.com")
				w.given(domain.ContactID(8).Stream(), domain.UserLinked{UserID: "u9", ContactID: 8, FromContactID: 9, Login: "ada@example.com", Email: "ada@example.com", Role: "subscriber"})
				w.given(domain.ContactID(9).Stream(), domain.UserUnlinked{UserID: "u9", ToContactID: 8})
				w.given(domain.ContactID(8).Stream(), domain.UserUnlinked{UserID: "u9", ToContactID: 9})
				w.crm.set(contact(id, "ada@example.com"))
			},
			action:   domain.ActionAdd,
			appended: []string{domain.TypeUserLinked, domain.TypeMetaPulled, domain.TypeWebhookProcessed},
			status:   StatusProcessed, message: "Linked the existing user with this email",
			check: func(t *testing.T, w *world, appended []domain.Event) {
				if l := find[domain.UserLinked](t, appended); l.UserID != "u9" {
					t.Errorf("linked %q, want u9 (no second user)", l.UserID)
				}
				r, err := w.proc.readReservation(context.Background(), domain.EmailStream("ada@example.com"))
				if err != nil || r.contact != id || r.userID != "u9" {
					t.Errorf("address held by %+v (%v), want contact 7's u9", r, err)
				}
			},
		},
		{
			name: "add for a contact whose own user two concurrent moves left on no contact links it back",
			given: func(w *world) {
				w.user(id, "u7", "ada@example.com")
				w.given(domain.ContactID(8).Stream(), domain.UserLinked{UserID: "u7", ContactID: 8, FromContactID: id, Login: "ada@example.com", Email: "ada@example.com", Role: "subscriber"})
				w.given(id.Stream(), domain.UserUnlinked{UserID: "u7", ToContactID: 8})
				w.given(domain.ContactID(8).Stream(), domain.UserUnlinked{UserID: "u7", ToContactID: id})
				w.crm.set(contact(id, "ada@example.com"))
			},
			action:   domain.ActionAdd,
			appended: []string{domain.TypeUserLinked, domain.TypeMetaPulled, domain.TypeWebhookProcessed},
			status:   StatusProcessed, message: "Linked the existing user with this email",
			check: func(t *testing.T, w *world, _ []domain.Event) {
				if u := w.state(id).User; u == nil || u.UserID != "u7" {
					t.Fatalf("contact 7's user = %+v, want u7 back", u)
				}
			},
		},
		{
			name: "update with the email param of another contact's user links it",
			given: func(w *world) {
				w.user(9, "u9", "ada@example.com")
				w.crm.set(contact(id, "ada@example.com"))
			},
			action:   domain.ActionUpdate,
			params:   map[string]string{"email": "ada@example.com"},
			appended: []string{domain.TypeUserLinked, domain.TypeMetaPulled, domain.TypeWebhookProcessed},
			status:   StatusProcessed, message: "Linked the existing user with this email",
		},
		{
			name: "a taken login gets a number",
			given: func(w *world) {
				w.given(domain.LoginStream("ada"), domain.LoginReserved{Login: "ada", ContactID: 9, UserID: "u9"})
				w.given(domain.ContactID(9).Stream(), domain.UserCreated{UserID: "u9", ContactID: 9, Login: "ada", Email: "other@example.com"})
				c := contact(id, "ada@example.com")
				c.Fields["login_field"] = "ada"
				w.crm.set(c)
				w.proc.policy.FieldMap = map[string]string{domain.MetaLogin: "login_field"}
			},
			action:   domain.ActionAdd,
			appended: []string{domain.TypeUserCreated, domain.TypePasswordIssued, domain.TypeWebhookProcessed},
			status:   StatusProcessed, message: "User created",
			check: func(t *testing.T, w *world, appended []domain.Event) {
				if c := find[domain.UserCreated](t, appended); c.Login != "ada2" {
					t.Errorf("login %q, want ada2", c.Login)
				}
			},
		},
		{
			name: "a password from the CRM field is used and not returned",
			given: func(w *world) {
				c := contact(id, "ada@example.com")
				c.Fields["9"] = "chosen"
				w.crm.set(c)
				w.proc.policy.FieldMap = map[string]string{domain.MetaPassword: "9"}
			},
			action:   domain.ActionAdd,
			appended: []string{domain.TypeUserCreated, domain.TypeWebhookProcessed},
			status:   StatusProcessed, message: "User created",
			check: func(t *testing.T, w *world, appended []domain.Event) {
				if c := find[domain.UserCreated](t, appended); c.PasswordHash != "hash(chosen)" {
					t.Errorf("hash %q, want the CRM's password", c.PasswordHash)
				}
			},
		},
		{
			name: "add for a contact that has a user behaves as update",
			given: func(w *world) {
				w.user(id, "u1", "ada@example.com")
				w.crm.set(contact(id, "ada@example.com"))
			},
			action:   domain.ActionAdd,
			appended: []string{domain.TypeMetaPulled, domain.TypeWebhookProcessed},
			status:   StatusProcessed, message: "User updated",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			w := newWorld(t, testPolicy())
			if tc.given != nil {
				tc.given(w)
			}
			wh := w.webhook(id, tc.action, tc.params)
			before := w.length(id.Stream())

			out, ok, err := w.proc.Next(context.Background(), id)

			if err != nil || !ok {
				t.Fatalf("Next = %+v, %v, %v", out, ok, err)
			}
			appended := w.events(id.Stream(), before)
			if got := types(appended); !slices.Equal(got, tc.appended) {
				t.Errorf("appended %v, want %v", got, tc.appended)
			}
			if out.WebhookID != wh || out.ContactID != id || out.Status != tc.status {
				t.Errorf("outcome %+v, want webhook %s status %s", out, wh, tc.status)
			}
			if tc.message != "" && out.Message != tc.message {
				t.Errorf("message %q, want %q", out.Message, tc.message)
			}
			if tc.kind == nil && out.Err != nil || tc.kind != nil && !errors.Is(out.Err, tc.kind) {
				t.Errorf("outcome error %v, want kind %v", out.Err, tc.kind)
			}
			if out.Position == 0 {
				t.Error("outcome has no position")
			}
			if tc.check != nil {
				tc.check(t, w, appended)
			}
		})
	}
}

func TestProcessWebhook_NoOpenWebhook_ReportsNothingToDo(t *testing.T) {
	w := newWorld(t, testPolicy())
	w.user(7, "u1", "ada@example.com")
	before := w.length(domain.ContactID(7).Stream())
	out, ok, err := w.proc.Next(context.Background(), 7)
	if err != nil || ok {
		t.Fatalf("Next = %+v, %v, %v; want nothing to do", out, ok, err)
	}
	if n := w.length(domain.ContactID(7).Stream()); n != before {
		t.Errorf("appended %d events", n-before)
	}
}

func TestProcessWebhook_RetryingWebhook_WaitsForItsTimeThenRunsAgain(t *testing.T) {
	w := newWorld(t, testPolicy())
	w.crm.contactErr = errCRMDown
	w.webhook(7, domain.ActionAdd, nil)
	ctx := context.Background()
	if out, _, err := w.proc.Next(ctx, 7); err != nil || out.Status != StatusRetrying {
		t.Fatalf("first attempt: %+v, %v", out, err)
	}
	before := w.length(domain.ContactID(7).Stream())

	// When asked again before its time: nothing is appended.
	out, ok, err := w.proc.Next(ctx, 7)
	if err != nil || !ok || out.Status != StatusRetrying || !out.RetryAt.Equal(t0.Add(time.Second)) {
		t.Fatalf("early attempt: %+v, %v, %v", out, ok, err)
	}
	if w.length(domain.ContactID(7).Stream()) != before {
		t.Error("an early attempt appended events")
	}

	// Then, once the CRM is back and the time has come, it is processed.
	w.crm.contactErr = nil
	w.crm.set(contact(7, "ada@example.com"))
	w.setNow(t0.Add(2 * time.Second))
	out, _, err = w.proc.Next(ctx, 7)
	if err != nil || out.Status != StatusProcessed {
		t.Fatalf("attempt after the wait: %+v, %v", out, err)
	}
}

func TestProcessWebhook_SecondRetry_WaitsLonger(t *testing.T) {
	w := newWorld(t, testPolicy())
	w.crm.contactErr = errCRMDown
	w.webhook(7, domain.ActionAdd, nil)
	ctx := context.Background()
	if _, _, err := w.proc.Next(ctx, 7); err != nil {
		t.Fatal(err)
	}
	w.setNow(t0.Add(time.Second))
	out, _, err := w.proc.Next(ctx, 7)
	if err != nil || !out.RetryAt.Equal(w.clock().Add(2*time.Second)) {
		t.Fatalf("second attempt: %+v, %v; want a retry in 2s", out, err)
	}
}

func TestProcessWebhook_Retry_IsJittered(t *testing.T) {
	tests := []struct {
		name   string
		jitter float64
		want   time.Duration // after t0, for the first retry (Initial 1s)
	}{
		{"NoJitter_TheFullBackoff", 0, time.Second},
		{"HalfJitter_ThreeQuarters", 0.5, 750 * time.Millisecond},
		{"FullJitter_HalfTheBackoff", 1, 500 * time.Millisecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := newWorld(t, testPolicy())
			w.jitter = tt.jitter
			w.crm.contactErr = errCRMDown
			w.webhook(7, domain.ActionAdd, nil)
			out, _, err := w.proc.Next(context.Background(), 7)
			if err != nil || out.Status != StatusRetrying || !out.RetryAt.Equal(t0.Add(tt.want)) {
				t.Fatalf("Next = %+v, %v; want retrying at t0+%v", out, err, tt.want)
			}
			s, err := w.proc.contacts.Load(context.Background(), 7)
			if err != nil || len(s.Pending) != 1 || !s.Pending[0].NextAttemptAt.Equal(t0.Add(tt.want)) {
				t.Fatalf("recorded next attempt: %+v, %v; want t0+%v", s, err, tt.want)
			}
		})
	}
}

func TestProcessWebhook_AnotherWriterWins_DecidesAgainWithoutReadingTheCRMAgain(t *testing.T) {
	w := newWorld(t, testPolicy())
	w.crm.set(contact(7, "ada@example.com"))
	w.webhook(7, domain.ActionAdd, nil)
	racing := &conflictingStore{EventStore: w.store, stream: domain.ContactID(7).Stream(), n: 2}
	w.proc.store, w.proc.contacts = racing, NewContacts(racing, 0)

	out, _, err := w.proc.Next(context.Background(), 7)

	if err != nil || out.Status != StatusProcessed {
		t.Fatalf("Next = %+v, %v", out, err)
	}
	if w.crm.reads != 1 {
		t.Errorf("the CRM was read %d times, want once", w.crm.reads)
	}
	got := types(w.events(domain.ContactID(7).Stream(), 0))
	if n := strings.Count(strings.Join(got, " "), domain.TypeUserCreated); n != 1 {
		t.Errorf("stream %v has %d UserCreated, want 1", got, n)
	}
	if len(w.secrets.keys) != 1 {
		t.Errorf("keys %v: one password, made once, should be left", w.secrets.keys)
	}
}

func TestProcessWebhook_OthersAlwaysWin_GivesUpAndKeepsTheWebhookOpen(t *testing.T) {
	w := newWorld(t, testPolicy())
	w.user(7, "u1", "ada@example.com")
	w.crm.set(contact(7, "ada@example.com", vip))
	w.webhook(7, domain.ActionUpdateTags, nil)
	racing := &conflictingStore{EventStore: w.store, stream: domain.ContactID(7).Stream(), n: 1000}
	w.proc.store, w.proc.contacts = racing, NewContacts(racing, 0)
	w.proc.contacts.conflicts.backoff = domain.Backoff{Initial: time.Microsecond, Max: time.Microsecond}

	_, ok, err := w.proc.Next(context.Background(), 7)

	if err == nil || ok || !strings.Contains(err.Error(), "gave up after 20 concurrent changes") {
		t.Fatalf("Next = %v, %v; want it to give up", ok, err)
	}
	if !w.state(7).Open("wh1") {
		t.Error("the webhook was closed")
	}
}

func TestProcessWebhook_StoreFails_ReturnsTheErrorAndShredsTheUnrecordedPassword(t *testing.T) {
	w := newWorld(t, testPolicy())
	w.crm.set(contact(7, "ada@example.com"))
	w.webhook(7, domain.ActionAdd, nil)
	broken := failingStore{EventStore: w.store, stream: domain.LoginStream("ada@example.com")}
	w.proc.store = broken

	_, ok, err := w.proc.Next(context.Background(), 7)

	if !errors.Is(err, errBoom) || ok {
		t.Fatalf("Next = %v, %v; want the store's error", ok, err)
	}
	if !w.state(7).Open("wh1") {
		t.Error("the webhook was closed")
	}
	if len(w.secrets.keys) != 0 {
		t.Errorf("keys %v left behind for a password never recorded", w.secrets.keys)
	}
}

func TestProcessWebhook_SealFails_ReturnsTheError(t *testing.T) {
	w := newWorld(t, testPolicy())
	w.crm.set(contact(7, "ada@example.com"))
	w.webhook(7, domain.ActionAdd, nil)
	w.secrets.sealErr = errBoom
	_, _, err := w.proc.Next(context.Background(), 7)
	if !errors.Is(err, errBoom) || !strings.Contains(err.Error(), "seal password") {
		t.Fatalf("err = %v, want the seal failure", err)
	}
}

func TestProcessWebhook_AddressClaimedByAnOpenWebhook_IsNotFree(t *testing.T) {
	w := newWorld(t, testPolicy())
	// Contact 9 reserved the address for a user it has not recorded yet:
	// its webhook is still open.
	w.given(domain.ContactID(9).Stream(), domain.WebhookReceived{WebhookID: "other", Action: domain.ActionAdd, ContactID: "9"})
	raw, _ := domain.Encode(domain.Envelope{Event: domain.EmailReserved{Email: "ada@example.com", ContactID: 9, UserID: "u9"}, OccurredAt: t0, WebhookID: "other"})
	if _, err := w.store.Append(context.Background(), domain.EmailStream("ada@example.com"), domain.NoStream(), raw); err != nil {
		t.Fatal(err)
	}
	w.crm.set(contact(7, "ada@example.com"))
	w.webhook(7, domain.ActionAdd, nil)
	w.proc.contacts.conflicts.backoff = domain.Backoff{Initial: time.Microsecond, Max: time.Microsecond}

	_, _, err := w.proc.Next(context.Background(), 7)

	if !errors.Is(err, ErrRacesLost) {
		t.Fatalf("err = %v; want contact 7 to wait for contact 9's claim (ErrRacesLost)", err)
	}
	if w.state(7).User != nil {
		t.Error("contact 7 got a user for an address being claimed")
	}
}

func TestNewProcessWebhook_RefusesAnIncompleteConfig(t *testing.T) {
	_, err := NewProcessWebhook(ProcessWebhookConfig{Policy: domain.Policy{}})
	for _, want := range []string{"no event store", "no CRM", "no secrets", "NewID", "default role"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v does not say %q", err, want)
		}
	}
	_, err = NewProcessWebhook(ProcessWebhookConfig{Policy: testPolicy(), Store: newWorld(t, testPolicy()).store, CRM: &fakeCRM{}, Secrets: &fakeSecrets{},
		NewID: func() string { return "x" }, Retry: domain.Backoff{Initial: time.Minute, Max: time.Second}})
	if err == nil || !strings.Contains(err.Error(), "retry") {
		t.Errorf("error %v, want the retry schedule refused", err)
	}
	_, err = NewProcessWebhook(ProcessWebhookConfig{Policy: testPolicy(), Store: newWorld(t, testPolicy()).store, CRM: &fakeCRM{}, Secrets: &fakeSecrets{},
		NewID: func() string { return "x" }, CRMConcurrency: -1, ContactCache: -1})
	for _, want := range []string{"CRM concurrency -1 must be at least 1", "contact cache -1 must be at least 1"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v does not say %q", err, want)
		}
	}
}
