package domain_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/usersync/usersync/domain"
)

var update = flag.Bool("update", false, "rewrite golden files and docs/events.md")

// sample is one example of every event type, with the sentence docs/events.md
// gives it. The order is the order of the doc.
func samples() []struct {
	event domain.Event
	doc   string
} {
	at := time.Date(2026, 1, 5, 8, 0, 0, 0, time.UTC)
	tags := []domain.Tag{{ID: 5, Name: "VIP"}, {ID: 7, Name: "Trial"}}
	return []struct {
		event domain.Event
		doc   string
	}{
		{domain.WebhookReceived{WebhookID: "01JH3Z8X6W2T5Q9R4V7K1M0N8P", Action: "add", ContactID: "12",
			Params: map[string]string{"send_notification": "true", "role": "customer"}, Method: "POST", Source: "203.0.113.7", ReceivedAt: at},
			"A webhook as it arrived (query and body merged), minus `access_key` and any parameter whose name looks like a secret. Appended (fsynced) before the webhook is answered. Stream: `contact-<id>`, or `webhook-<webhook id>` when `contact_id` is missing or invalid."},
		{domain.WebhookProcessed{WebhookID: "01JH3Z8X6W2T5Q9R4V7K1M0N8P", Action: "add", Message: "User created", UserID: "3f1c2a9e-8d7b-4c6a-9e5f-1a2b3c4d5e6f",
			Changed: []string{"UserCreated", "TagsUpdated", "MetaPulled", "PasswordIssued"}},
			"Outcome: the webhook acted on a user. `changed` lists the event types it appended; empty for a repeat that changed nothing."},
		{domain.WebhookIgnored{WebhookID: "01JH3Z8X6W2T5Q9R4V7K1M0N8P", Action: "update_tags", Reason: "No matching user found"},
			"Outcome: nothing to act on (no `contact_id`, no matching user). (`test` is answered and not recorded.)"},
		{domain.WebhookFailed{WebhookID: "01JH3Z8X6W2T5Q9R4V7K1M0N8P", Action: "add", Reason: "No email provided for imported user", Status: 500},
			"Outcome: the webhook failed; the user did not change. `status` is the HTTP status of the answer."},
		{domain.WebhookRetrying{WebhookID: "01JH3Z8X6W2T5Q9R4V7K1M0N8P", Attempt: 2, Error: "funnelkit: GET v3/contacts/12: 503 Service Unavailable", NextAttemptAt: at.Add(2 * time.Second)},
			"A transient failure (CRM unreachable or 5xx): the webhook stays queued and is tried again."},
		{domain.UserCreated{UserID: "3f1c2a9e-8d7b-4c6a-9e5f-1a2b3c4d5e6f", ContactID: 12, Login: "ann@example.com", Email: "ann@example.com", Role: "customer",
			PasswordHash: "$2a$10$7EqJtq98hPqEX7fNZaFWoOhi5BWX4Z5YZ0Zcyb0e5lCq/9Dw6bF1K", WelcomeEmail: true},
			"A new user. Only a bcrypt hash of the password is recorded. `welcome_email` asks for the welcome email (`send_notification`)."},
		{domain.UserLinked{UserID: "3f1c2a9e-8d7b-4c6a-9e5f-1a2b3c4d5e6f", ContactID: 12, FromContactID: 5, Login: "ann@example.com", Email: "ann@example.com",
			Role: "subscriber", PasswordHash: "$2a$10$7EqJtq98hPqEX7fNZaFWoOhi5BWX4Z5YZ0Zcyb0e5lCq/9Dw6bF1K", Meta: map[string]string{"first_name": "Ann"}, Tags: tags[:1], CreatedAt: at.Add(-72 * time.Hour)},
			"`add` for a new contact whose email already has a user: that user moves to this contact (never a duplicate). Carries the user as it was."},
		{domain.UserUnlinked{UserID: "3f1c2a9e-8d7b-4c6a-9e5f-1a2b3c4d5e6f", ToContactID: 12},
			"In the old contact's stream: its user moved to another contact."},
		{domain.MetaPulled{Changes: []domain.MetaChange{{Key: "first_name", Old: "", New: "Ann"}, {Key: "user_email", Old: "ann@old.example", New: "ann@example.com"}}},
			"User fields that changed when the contact was pulled from the CRM, sorted by key; `new` empty clears the field. `user_email` changes the user's email."},
		{domain.TagsUpdated{Tags: tags, Added: tags[1:], Removed: []domain.Tag{{ID: 9, Name: "Gold"}}},
			"The complete new tag set (replaced, never merged), with what was added and removed; sorted by tag id."},
		{domain.RoleChanged{Old: "subscriber", New: "customer"}, "A role a webhook asked for and may grant (`administrator` never)."},
		{domain.PasswordIssued{KeyID: "pw-12-01JH3Z8X6W2T5Q9R4V7K1M0N8P", Sealed: []byte("\x01sealed-bytes-base64-in-json"), Field: "7"},
			"A generated password to return to FunnelKit field `field`, sealed (AES-256-GCM) under key `key_id`, which lives outside the event log and is destroyed once the password is returned or given up. `sealed` is base64."},
		{domain.PasswordReturned{KeyID: "pw-12-01JH3Z8X6W2T5Q9R4V7K1M0N8P", Field: "7", Attempt: 3}, "FunnelKit accepted the password; the key is then destroyed."},
		{domain.PasswordReturnFailed{KeyID: "pw-12-01JH3Z8X6W2T5Q9R4V7K1M0N8P", Field: "7", Attempt: 1, Error: "funnelkit: POST v3/contacts/12/fields: 503 Service Unavailable", NextAttemptAt: at.Add(time.Second)},
			"A failed return attempt. `gave_up` marks the last one: the key is destroyed and the return stays failed. A node stopped cleanly in the middle of an attempt records it as failed with the error `interrupted: the node stopped during the attempt; the next attempt may be made at once` and `next_attempt_at` the stop's time (never a give-up), so its claim does not hold until `until`."},
		{domain.PasswordReturnClaimed{KeyID: "pw-12-01JH3Z8X6W2T5Q9R4V7K1M0N8P", Field: "7", Attempt: 1, Until: at.Add(2 * time.Minute), Node: "node-7f3a9c21"},
			"The node `node` (its id, kept in its data directory across restarts) takes attempt `attempt` of the password return until `until`, appended at the version of the stream it read, so of nodes claiming at once one wins and only it writes to FunnelKit. Only a node holding the key claims. A claim no `PasswordReturned` or `PasswordReturnFailed` closed by `until` is expired: the next attempt may be claimed. A node that finds its own claim live after a restart takes it over at once. `until` is the claim's time plus 2 × `--funnelkit-timeout` + 5 s (the clock skew allowed between nodes)."},
		{domain.PasswordReplaced{OldKeyID: "pw-12-01JH3Z8X6W2T5Q9R4V7K1M0N8P", KeyID: "pw-12-01JH40A1B2C3D4E5F6G7H8J9K0", Sealed: []byte{1, 0x6f, 0x22, 0x9c, 0x11}, Field: "7", PasswordHash: "$2a$10$N9qo8uLOickgx2ZMRZoMyeIjZAgcfl7p92ldGxad68LJZdL17lhWy"},
			"The node that issued the password showed no sign of life for the take-over delay and only it holds `old_key_id`: another node issued a new password (new hash, the user's password from now on; sealed under its own key `key_id`) and returns it instead. The old key is shredded where it is; the old password is never returned."},
		{domain.WelcomeEmailClaimed{To: "ann@example.com", Attempt: 1, MessageID: "<welcome.3f1c2a9e8d7b4c6a9e5f1a2b3c4d5e6f@example.com>", Until: at.Add(2 * time.Minute), Node: "node-7f3a9c21"},
			"A node sends attempt `attempt` of the welcome email until `until`, appended at the version read (one node wins). Every attempt carries the first claim's `message_id`, so a mail sent again after a crash between sending and recording is the same mail. `until` is the claim's time plus 2 × the SMTP session's timeout (30 s) + 5 s."},
		{domain.WelcomeEmailSent{To: "ann@example.com", Transport: "smtp", Attempt: 1}, "The welcome email (login and login link, never the password) went out through `smtp` or `outbox`."},
		{domain.WelcomeEmailFailed{To: "ann@example.com", Attempt: 1, Error: "smtp: dial 127.0.0.1:25: connection refused", NextAttemptAt: at.Add(time.Second)},
			"A failed attempt to send the welcome email; retried until `gave_up`. An attempt a clean stop interrupted is recorded so too, with the error `interrupted: …` and `next_attempt_at` the stop's time (see `PasswordReturnFailed`)."},
		{domain.EmailReserved{Email: "ann@example.com", ContactID: 12, UserID: "3f1c2a9e-8d7b-4c6a-9e5f-1a2b3c4d5e6f"},
			"Stream `email-<address in lower case>`: the address belongs to this contact's user. Appended with an expected version, so two users never hold one address."},
		{domain.EmailReleased{Email: "ann@old.example", ContactID: 12}, "The address is free again (the user's email changed)."},
		{domain.LoginReserved{Login: "ann@example.com", ContactID: 12, UserID: "3f1c2a9e-8d7b-4c6a-9e5f-1a2b3c4d5e6f"},
			"Stream `login-<login in lower case>`: the login belongs to this contact's user; a clash gets a number appended."},
		{domain.OperatorActed{Action: "parked_replay", Target: "welcome_email event 12 (contact-12 version 1)", Source: "192.0.2.7", Credential: "admin token", Outcome: "replayed"},
			"Stream `operator`: an action an operator took in the console (`sign_in`, `rebuild`, `verify`, `parked_replay`, `parked_skip`, `retry_password_return`, `retry_welcome_email`), what it touched, the source address, a name for the credential used (never the credential) and its outcome.\n\n" +
				"An action that concerns one contact is also recorded in that contact's stream `contact-ID`, so its timeline shows it: a parked event's replay or skip (the parked event's stream), and the two retries. " +
				"In a contact's stream a retry is also a fact the state reads: `retry_password_return` makes a pending return's next attempt due at the event's time (a return given up stays given up: its key is destroyed); " +
				"`retry_welcome_email` does the same for a welcome mail, and opens a given-up one again for one attempt more. The other actions change nothing there."},
	}
}

func TestEncode_Golden(t *testing.T) {
	at := time.Date(2026, 1, 5, 8, 0, 0, 0, time.UTC)
	var doc bytes.Buffer
	doc.WriteString(docHead)
	seen := map[string]bool{}
	for _, s := range samples() {
		typ := s.event.EventType()
		seen[typ] = true
		env := domain.Envelope{Event: s.event, OccurredAt: at, WebhookID: "01JH3Z8X6W2T5Q9R4V7K1M0N8P"}
		ne, err := domain.Encode(env)
		if err != nil {
			t.Fatal(err)
		}
		got := pretty(t, ne)
		golden := filepath.Join("testdata", "events", typ+".json")
		if *update {
			if err := os.WriteFile(golden, got, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		want, err := os.ReadFile(golden)
		if err != nil {
			t.Fatalf("%v (run go test ./domain -update to create it)", err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s: encoding changed; stored events would no longer read the same.\ngot  %s\nwant %s", typ, got, want)
		}
		// Round trip: what was encoded decodes to the same value.
		back, err := domain.Decode(domain.RecordedEvent{Type: ne.Type, Data: ne.Data, Metadata: ne.Metadata})
		if err != nil {
			t.Fatalf("%s: %v", typ, err)
		}
		if !reflect.DeepEqual(back.Event, s.event) || !back.OccurredAt.Equal(at) || back.WebhookID != env.WebhookID {
			t.Errorf("%s round trip:\ngot  %+v\nwant %+v", typ, back.Event, s.event)
		}
		fmt.Fprintf(&doc, "## %s\n\n%s\n\n```json\n%s```\n\n", typ, s.doc, got)
	}
	for _, typ := range domain.EventTypes() {
		if !seen[typ] {
			t.Errorf("event type %s has no sample: add one to samples()", typ)
		}
	}
	if len(seen) != len(domain.EventTypes()) {
		t.Errorf("%d samples, %d event types: EventTypes() misses one", len(seen), len(domain.EventTypes()))
	}
	docPath := filepath.Join("..", "docs", "events.md")
	if *update {
		if err := os.WriteFile(docPath, doc.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	current, err := os.ReadFile(docPath)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(current, doc.Bytes()) {
		t.Errorf("docs/events.md does not match the code; run go test ./domain -update")
	}
}

func pretty(t *testing.T, ne domain.NewEvent) []byte {
	t.Helper()
	v := map[string]json.RawMessage{"type": json.RawMessage(`"` + ne.Type + `"`), "metadata": ne.Metadata, "data": ne.Data}
	raw, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := json.Indent(&out, raw, "", "  "); err != nil {
		t.Fatal(err)
	}
	out.WriteByte('\n')
	return out.Bytes()
}

func TestDecode_RefusesWhatItCannotRead(t *testing.T) {
	meta := []byte(`{"schema":1,"occurred_at":"2026-01-05T08:00:00Z"}`)
	tests := []struct {
		name    string
		r       domain.RecordedEvent
		wantErr error
		mention string
	}{
		{"unknown type", domain.RecordedEvent{Stream: "contact-1", Version: 3, Type: "UserTeleported", Data: []byte(`{}`), Metadata: meta}, domain.ErrUnknownEventType, "UserTeleported"},
		{"newer schema", domain.RecordedEvent{Stream: "contact-1", Version: 4, Type: domain.TypeTagsUpdated, Data: []byte(`{}`),
			Metadata: []byte(`{"schema":2,"occurred_at":"2026-01-05T08:00:00Z"}`)}, domain.ErrUnsupportedSchema, "schema 2"},
		{"bad data", domain.RecordedEvent{Stream: "contact-1", Version: 5, Type: domain.TypeTagsUpdated, Data: []byte(`{"tags":"x"}`), Metadata: meta}, nil, "contact-1"},
		{"bad metadata", domain.RecordedEvent{Stream: "contact-1", Version: 6, Type: domain.TypeTagsUpdated, Data: []byte(`{}`), Metadata: []byte(`nope`)}, nil, "metadata"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := domain.Decode(tt.r)
			if err == nil {
				t.Fatal("decoded")
			}
			if tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
				t.Fatalf("err %v, want %v", err, tt.wantErr)
			}
			if !strings.Contains(err.Error(), tt.mention) {
				t.Fatalf("error %q does not mention %q", err, tt.mention)
			}
		})
	}
}

const docHead = `# Events

Every change to a user is one of these events, appended to an event store and
never changed. This file is generated from the code by
` + "`go test ./domain -update`" + ` and checked by the tests, so it always
matches what usersync writes.

Each stored event has a **type** (the heading), **data** (JSON, field names
below are stable) and **metadata**:

| field | meaning |
|---|---|
| ` + "`schema`" + ` | schema version of the data; this build writes and reads 1. A newer one is parked, not skipped. |
| ` + "`occurred_at`" + ` | when it happened (RFC 3339, UTC) |
| ` + "`webhook_id`" + ` | the webhook that caused it (causation); absent for events a background process caused on its own |

Streams: ` + "`contact-<FunnelKit contact id>`" + ` for everything about a contact
and its user; ` + "`email-<address>`" + ` and ` + "`login-<login>`" + ` for reservations;
` + "`webhook-<id>`" + ` for webhooks that name no valid contact.

No event holds a secret: the access key is stripped from ` + "`WebhookReceived`" + `,
passwords appear only as a bcrypt hash or sealed under a key that is destroyed
after use.

`

func TestParseMetadata_FastPathAgreesWithJSON(t *testing.T) {
	at := time.Date(2026, 1, 5, 8, 0, 0, 123456789, time.UTC)
	for _, m := range []string{
		`{"schema":1,"occurred_at":"2026-01-05T08:00:00.123456789Z","webhook_id":"abc"}`,
		`{"schema":1,"occurred_at":"2026-01-05T08:00:00.123456789Z"}`,
		`{"schema":12,"occurred_at":"2026-01-05T08:00:00.123456789Z","webhook_id":"a\"b"}`,
		`{"occurred_at":"2026-01-05T08:00:00.123456789Z","schema":1}`,
		`{ "schema": 1, "occurred_at": "2026-01-05T08:00:00.123456789Z" }`,
	} {
		r := domain.RecordedEvent{Type: domain.TypeRoleChanged, Data: []byte(`{}`), Metadata: []byte(m)}
		env, err := domain.Decode(r)
		if err != nil && !strings.Contains(m, `"schema":12`) {
			t.Fatalf("%s: %v", m, err)
		}
		if err == nil && !env.OccurredAt.Equal(at) {
			t.Fatalf("%s: occurred_at %v", m, env.OccurredAt)
		}
		if strings.Contains(m, `a\"b`) && err == nil {
			t.Fatalf("%s: schema 12 accepted", m)
		}
	}
	env, _ := domain.Decode(domain.RecordedEvent{Type: domain.TypeRoleChanged, Data: []byte(`{}`),
		Metadata: []byte(`{"schema":1,"occurred_at":"2026-01-05T08:00:00.123456789Z","webhook_id":"abc"}`)})
	if env.WebhookID != "abc" {
		t.Fatalf("webhook id %q", env.WebhookID)
	}
}
