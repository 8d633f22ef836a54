package domain_test

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/usersync/usersync/domain"
)

func TestDescribe_EveryEventTypeInWords(t *testing.T) {
	at := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	tests := []struct {
		event domain.Event
		want  string
	}{
		{domain.WebhookReceived{Action: "update_tags", Method: "POST", Source: "10.0.0.1"}, "Webhook received: update_tags by POST from 10.0.0.1"},
		{domain.WebhookProcessed{Message: "tags updated"}, "Webhook processed: tags updated"},
		{domain.WebhookIgnored{Reason: "action test"}, "Webhook ignored: action test"},
		{domain.WebhookFailed{Reason: "contact_id must be a positive integer", Status: 400}, "Webhook failed (status 400): contact_id must be a positive integer"},
		{domain.WebhookRetrying{Attempt: 2, Error: "CRM 503", NextAttemptAt: at}, "Webhook to be retried (attempt 2 failed: CRM 503); next attempt at 2026-12-01T10:00:00Z"},
		{domain.UserCreated{Role: "subscriber", Login: "alice", Email: "alice@example.com", PasswordHash: "$2a$secret"}, "User created as subscriber (login alice, email alice@example.com)"},
		{domain.UserCreated{Role: "subscriber", Login: "bo", Email: "bo@example.com", WelcomeEmail: true}, "User created as subscriber (login bo, email bo@example.com), welcome email asked for"},
		{domain.UserLinked{FromContactID: 7, Role: "customer", Login: "alice", Email: "a@x", PasswordHash: "$2a$secret"}, "User linked from contact 7 as customer (login alice, email a@x)"},
		{domain.UserUnlinked{ToContactID: 9}, "User moved to contact 9"},
		{domain.MetaPulled{Changes: []domain.MetaChange{{Key: "city", New: "Paris"}, {Key: "phone", Old: "555-1", New: "555-2"}}}, "Meta changed: city (none) → Paris, phone 555-1 → 555-2"},
		{domain.MetaPulled{}, "Meta changed: nothing"},
		{domain.TagsUpdated{Added: []domain.Tag{{ID: 1, Name: "VIP"}, {ID: 3}}, Removed: []domain.Tag{{ID: 2, Name: "Trial"}}}, "Tags changed: +VIP +#3 −Trial"},
		{domain.TagsUpdated{}, "Tags changed: none added or removed"},
		{domain.RoleChanged{Old: "subscriber", New: "customer"}, "Role changed: subscriber → customer"},
		{domain.PasswordIssued{Field: "7", Sealed: []byte("sealed")}, "Password issued for FunnelKit field 7"},
		{domain.PasswordReturnClaimed{Field: "7", Attempt: 2, Until: at, Node: "n1"}, "Password return to FunnelKit field 7 claimed by node n1 (attempt 2, until 2026-12-01T10:00:00Z)"},
		{domain.PasswordReturned{Field: "7", Attempt: 2}, "Password returned to FunnelKit field 7 (attempt 2)"},
		{domain.PasswordReturnFailed{Field: "7", Attempt: 1, Error: "CRM 500", NextAttemptAt: at}, "Password return to FunnelKit field 7 failed (attempt 1): CRM 500; next attempt at 2026-12-01T10:00:00Z"},
		{domain.PasswordReturnFailed{Field: "7", Attempt: 5, Error: "CRM 500", GaveUp: true}, "Password return to FunnelKit field 7 failed (attempt 5): CRM 500; given up"},
		{domain.PasswordReplaced{OldKeyID: "k1", KeyID: "k2", Field: "7", PasswordHash: "$2a$secret", Sealed: []byte("sealed")}, "Password replaced for FunnelKit field 7 (the old one, key k1, is never returned)"},
		{domain.WelcomeEmailClaimed{To: "a@x", Attempt: 1, Until: at}, "Welcome email to a@x claimed (attempt 1, until 2026-12-01T10:00:00Z)"},
		{domain.WelcomeEmailSent{To: "a@x", Transport: "smtp", Attempt: 1}, "Welcome email sent to a@x by smtp (attempt 1)"},
		{domain.OperatorActed{Action: "parked_skip", Target: "users event 9", Source: "192.0.2.7", Credential: "admin token", Outcome: "skipped"}, "Operator parked skip of users event 9 from 192.0.2.7 with the admin token: skipped"},
		{domain.OperatorActed{Action: "rebuild", Source: "192.0.2.7", Credential: "admin token"}, "Operator rebuild from 192.0.2.7 with the admin token"},
		{domain.OperatorActed{Action: domain.ActionRetryPasswordReturn, Target: "contact 7", Source: "127.0.0.1", Credential: "admin token"}, "Operator retried the password return (admin token, from 127.0.0.1)"},
		{domain.OperatorActed{Action: domain.ActionRetryWelcomeEmail, Target: "contact 7", Source: "127.0.0.1", Credential: "admin token", Outcome: "asked"}, "Operator retried the welcome email (admin token, from 127.0.0.1): asked"},
		{domain.WelcomeEmailFailed{To: "a@x", Attempt: 3, Error: "550", GaveUp: true}, "Welcome email to a@x failed (attempt 3): 550; given up"},
		{domain.EmailReserved{Email: "a@x", ContactID: 5}, "Email a@x reserved for contact 5"},
		{domain.EmailReleased{Email: "a@x", ContactID: 5}, "Email a@x released by contact 5"},
		{domain.LoginReserved{Login: "alice", ContactID: 5}, "Login alice reserved for contact 5"},
	}
	described := map[string]bool{}
	for _, tc := range tests {
		t.Run(tc.event.EventType(), func(t *testing.T) {
			got := domain.Describe(tc.event)
			if got != tc.want {
				t.Fatalf("Describe(%T) = %q, want %q", tc.event, got, tc.want)
			}
			if strings.Contains(got, "secret") || strings.Contains(got, "sealed") {
				t.Fatalf("Describe(%T) = %q quotes a secret", tc.event, got)
			}
		})
		described[tc.event.EventType()] = true
	}
	for _, typ := range domain.EventTypes() {
		if !described[typ] {
			t.Errorf("event type %s has no case in this table", typ)
		}
	}
}

func TestMetaDiff_PulledChangesAndLinkedMeta(t *testing.T) {
	tests := []struct {
		name  string
		event domain.Event
		want  []domain.MetaChange
	}{
		{"pulled", domain.MetaPulled{Changes: []domain.MetaChange{{Key: "phone", Old: "555-1", New: "555-2"}}}, []domain.MetaChange{{Key: "phone", Old: "555-1", New: "555-2"}}},
		{"linked", domain.UserLinked{Meta: map[string]string{"phone": "1", "city": "Oslo"}}, []domain.MetaChange{{Key: "city", New: "Oslo"}, {Key: "phone", New: "1"}}},
		{"tags", domain.TagsUpdated{}, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := domain.MetaDiff(tc.event); !slices.Equal(got, tc.want) {
				t.Fatalf("MetaDiff = %v, want %v", got, tc.want)
			}
		})
	}
}
