package domain_test

import (
	"errors"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/usersync/usersync/domain"
)

// These tests specify the contact aggregate: given the events already in a
// contact's stream, when one more event is applied, then the state is ...

const stateContact domain.ContactID = 12

var stateT0 = time.Date(2026, 3, 1, 9, 0, 0, 0, time.UTC)

// at is the time of the i-th event of a test stream.
func at(i int) time.Time { return stateT0.Add(time.Duration(i) * time.Minute) }

// replay applies events to a new state of stateContact, the i-th event
// occurring at at(i).
func replay(events ...domain.Event) *domain.ContactState {
	s := domain.NewContactState(stateContact)
	for i, e := range events {
		s.Apply(domain.Envelope{Event: e, OccurredAt: at(i)})
	}
	return s
}

func received(id string) domain.WebhookReceived {
	return domain.WebhookReceived{
		WebhookID: id, Action: "add", ContactID: stateContact.String(),
		Params: map[string]string{"tags": "5"}, Method: "POST", ReceivedAt: stateT0,
	}
}

func pendingIDs(s *domain.ContactState) []string {
	var ids []string
	for _, p := range s.Pending {
		ids = append(ids, p.WebhookID)
	}
	return ids
}

var annCreated = domain.UserCreated{
	UserID: "u-12", ContactID: stateContact, Login: "ann", Email: "ann@example.com",
	Role: "subscriber", PasswordHash: "$2a$hash",
}

func TestNewContactState_HasNoEventsNoUserAndNoWebhooks(t *testing.T) {
	s := domain.NewContactState(stateContact)
	if s.ContactID != stateContact || s.Version != 0 || s.User != nil || s.Password != nil || len(s.Pending) != 0 {
		t.Fatalf("new state: %+v", s)
	}
	if s.Webhooks == nil {
		t.Fatal("Webhooks is nil: applying a WebhookReceived would panic")
	}
	if s.Open("wh-1") {
		t.Fatal("a webhook the stream never recorded is open")
	}
}

func TestApply_Webhooks(t *testing.T) {
	tests := []struct {
		name        string
		given       []domain.Event
		when        domain.Event
		wantOpen    map[string]bool
		wantPending []string
	}{
		{
			name:        "WebhookReceived_OpensTheWebhookAndQueuesIt",
			when:        received("wh-1"),
			wantOpen:    map[string]bool{"wh-1": true},
			wantPending: []string{"wh-1"},
		},
		{
			name:        "WebhookReceived_QueuesInOrderOfArrival",
			given:       []domain.Event{received("wh-1"), received("wh-2")},
			when:        received("wh-3"),
			wantOpen:    map[string]bool{"wh-1": true, "wh-2": true, "wh-3": true},
			wantPending: []string{"wh-1", "wh-2", "wh-3"},
		},
		{
			name:        "WebhookReceived_Again_IsQueuedOnlyOnce",
			given:       []domain.Event{received("wh-1"), received("wh-2")},
			when:        received("wh-1"),
			wantOpen:    map[string]bool{"wh-1": true, "wh-2": true},
			wantPending: []string{"wh-1", "wh-2"},
		},
		{
			name:        "WebhookReceived_AfterItsOutcome_DoesNotReopenIt",
			given:       []domain.Event{received("wh-1"), domain.WebhookProcessed{WebhookID: "wh-1"}},
			when:        received("wh-1"),
			wantOpen:    map[string]bool{"wh-1": false},
			wantPending: nil,
		},
		{
			name:        "WebhookProcessed_ClosesTheWebhook",
			given:       []domain.Event{received("wh-1")},
			when:        domain.WebhookProcessed{WebhookID: "wh-1", Action: "add", UserID: "u-12"},
			wantOpen:    map[string]bool{"wh-1": false},
			wantPending: nil,
		},
		{
			name:        "WebhookIgnored_ClosesTheWebhook",
			given:       []domain.Event{received("wh-1")},
			when:        domain.WebhookIgnored{WebhookID: "wh-1", Action: "test", Reason: "test webhook"},
			wantOpen:    map[string]bool{"wh-1": false},
			wantPending: nil,
		},
		{
			name:        "WebhookFailed_ClosesTheWebhook",
			given:       []domain.Event{received("wh-1")},
			when:        domain.WebhookFailed{WebhookID: "wh-1", Action: "add", Reason: "no email", Status: 422},
			wantOpen:    map[string]bool{"wh-1": false},
			wantPending: nil,
		},
		{
			name:        "Outcome_ClosesOnlyItsWebhook_TheOthersKeepTheirOrder",
			given:       []domain.Event{received("wh-1"), received("wh-2"), received("wh-3")},
			when:        domain.WebhookFailed{WebhookID: "wh-2"},
			wantOpen:    map[string]bool{"wh-1": true, "wh-2": false, "wh-3": true},
			wantPending: []string{"wh-1", "wh-3"},
		},
		{
			name:        "WebhookRetrying_KeepsTheWebhookOpenAndQueued",
			given:       []domain.Event{received("wh-1")},
			when:        domain.WebhookRetrying{WebhookID: "wh-1", Attempt: 1, Error: "503", NextAttemptAt: at(10)},
			wantOpen:    map[string]bool{"wh-1": true},
			wantPending: []string{"wh-1"},
		},
		{
			name: "Outcome_AfterRetries_ClosesTheWebhook",
			given: []domain.Event{
				received("wh-1"),
				domain.WebhookRetrying{WebhookID: "wh-1", Attempt: 1, NextAttemptAt: at(10)},
				domain.WebhookRetrying{WebhookID: "wh-1", Attempt: 2, NextAttemptAt: at(20)},
			},
			when:        domain.WebhookProcessed{WebhookID: "wh-1"},
			wantOpen:    map[string]bool{"wh-1": false},
			wantPending: nil,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := replay(append(slices.Clone(tt.given), tt.when)...)
			for id, open := range tt.wantOpen {
				if got := s.Open(id); got != open {
					t.Errorf("Open(%q) = %v, want %v", id, got, open)
				}
				if _, seen := s.Webhooks[id]; !seen {
					t.Errorf("webhook %q is not recorded in Webhooks", id)
				}
			}
			if len(s.Webhooks) != len(tt.wantOpen) {
				t.Errorf("Webhooks = %v, want exactly %v", s.Webhooks, tt.wantOpen)
			}
			if got := pendingIDs(s); !slices.Equal(got, tt.wantPending) {
				t.Errorf("pending = %v, want %v", got, tt.wantPending)
			}
		})
	}
}

func TestApply_WebhookReceived_PendingKeepsTheWebhookAsReceived(t *testing.T) {
	first := received("wh-1")
	again := received("wh-1")
	again.Params = map[string]string{"tags": "7"}

	s := replay(first, again)

	if len(s.Pending) != 1 {
		t.Fatalf("pending: %+v", s.Pending)
	}
	p := s.Pending[0]
	if !reflect.DeepEqual(p.WebhookReceived, first) {
		t.Errorf("pending webhook = %+v, want the first recording %+v", p.WebhookReceived, first)
	}
	if p.Attempts != 0 || !p.NextAttemptAt.IsZero() {
		t.Errorf("a webhook never tried has attempts %d, next attempt %v", p.Attempts, p.NextAttemptAt)
	}
}

func TestApply_WebhookRetrying_RecordsTheAttemptOnThatWebhookOnly(t *testing.T) {
	// Given two queued webhooks, the first already retried once
	s := replay(
		received("wh-1"), received("wh-2"),
		domain.WebhookRetrying{WebhookID: "wh-1", Attempt: 1, NextAttemptAt: at(5)},
	)
	// When the first fails again
	s.Apply(domain.Envelope{Event: domain.WebhookRetrying{WebhookID: "wh-1", Attempt: 2, NextAttemptAt: at(15)}, OccurredAt: at(6)})
	// Then it carries the latest attempt and time; the second is untouched
	if p := s.Pending[0]; p.Attempts != 2 || !p.NextAttemptAt.Equal(at(15)) {
		t.Errorf("wh-1: attempts %d, next %v; want 2, %v", p.Attempts, p.NextAttemptAt, at(15))
	}
	if p := s.Pending[1]; p.Attempts != 0 || !p.NextAttemptAt.IsZero() {
		t.Errorf("wh-2: attempts %d, next %v; want untouched", p.Attempts, p.NextAttemptAt)
	}
}

func TestApply_WebhookRetrying_ForAWebhookNotQueued_ChangesNothing(t *testing.T) {
	s := replay(received("wh-1"), domain.WebhookProcessed{WebhookID: "wh-1"}, received("wh-2"))
	before := pendingIDs(s)

	s.Apply(domain.Envelope{Event: domain.WebhookRetrying{WebhookID: "wh-1", Attempt: 1, NextAttemptAt: at(9)}})
	s.Apply(domain.Envelope{Event: domain.WebhookRetrying{WebhookID: "wh-404", Attempt: 1, NextAttemptAt: at(9)}})

	if got := pendingIDs(s); !slices.Equal(got, before) || s.Pending[0].Attempts != 0 {
		t.Fatalf("pending = %+v, want %v untouched", s.Pending, before)
	}
	if s.Open("wh-1") || s.Open("wh-404") {
		t.Fatal("a retry reopened or opened a webhook")
	}
}

func TestApply_UserEvents(t *testing.T) {
	linkedCreated := time.Date(2025, 6, 1, 0, 0, 0, 0, time.UTC)
	tests := []struct {
		name  string
		given []domain.Event
		when  domain.Event
		want  *domain.User // UpdatedAt is at(len(given)) unless the event changes nothing
	}{
		{
			name: "UserCreated_GivesTheContactAUser",
			when: annCreated,
			want: &domain.User{
				UserID: "u-12", ContactID: stateContact, Login: "ann", Email: "ann@example.com",
				Role: "subscriber", PasswordHash: "$2a$hash", Meta: map[string]string{},
				CreatedAt: at(0), UpdatedAt: at(0),
			},
		},
		{
			name: "UserLinked_TakesOverTheUserAsItWas",
			when: domain.UserLinked{
				UserID: "u-7", ContactID: stateContact, FromContactID: 7, Login: "ann", Email: "ann@example.com",
				Role: "customer", PasswordHash: "$2a$old", Meta: map[string]string{"first_name": "Ann"},
				Tags: []domain.Tag{{ID: 5, Name: "VIP"}}, CreatedAt: linkedCreated,
			},
			want: &domain.User{
				UserID: "u-7", ContactID: stateContact, Login: "ann", Email: "ann@example.com",
				Role: "customer", PasswordHash: "$2a$old", Meta: map[string]string{"first_name": "Ann"},
				Tags: []domain.Tag{{ID: 5, Name: "VIP"}}, CreatedAt: linkedCreated, UpdatedAt: at(0),
			},
		},
		{
			name: "UserLinked_WithoutMeta_GivesAnEmptyMetaMap",
			when: domain.UserLinked{UserID: "u-7", ContactID: stateContact, FromContactID: 7, CreatedAt: linkedCreated},
			want: &domain.User{UserID: "u-7", ContactID: stateContact, Meta: map[string]string{}, CreatedAt: linkedCreated, UpdatedAt: at(0)},
		},
		{
			name:  "UserUnlinked_TheUserMovedAway_LeavesNoUser",
			given: []domain.Event{annCreated},
			when:  domain.UserUnlinked{UserID: "u-12", ToContactID: 99},
			want:  nil,
		},
		{
			name:  "MetaPulled_SetsChangesAndClearsMeta",
			given: []domain.Event{annCreated, domain.MetaPulled{Changes: []domain.MetaChange{{Key: "first_name", New: "Ann"}, {Key: "billing_state", New: "NY"}}}},
			when: domain.MetaPulled{Changes: []domain.MetaChange{
				{Key: "billing_phone", New: "555"},
				{Key: "billing_state", Old: "NY", New: ""},
				{Key: "first_name", Old: "Ann", New: "Anne"},
			}},
			want: &domain.User{
				UserID: "u-12", ContactID: stateContact, Login: "ann", Email: "ann@example.com",
				Role: "subscriber", PasswordHash: "$2a$hash",
				Meta:      map[string]string{"first_name": "Anne", "billing_phone": "555"},
				CreatedAt: at(0), UpdatedAt: at(2),
			},
		},
		{
			name:  "MetaPulled_UserEmail_ChangesTheEmailNotTheMeta",
			given: []domain.Event{annCreated},
			when:  domain.MetaPulled{Changes: []domain.MetaChange{{Key: domain.MetaEmail, Old: "ann@example.com", New: "ann@new.example"}}},
			want: &domain.User{
				UserID: "u-12", ContactID: stateContact, Login: "ann", Email: "ann@new.example",
				Role: "subscriber", PasswordHash: "$2a$hash", Meta: map[string]string{},
				CreatedAt: at(0), UpdatedAt: at(1),
			},
		},
		{
			name:  "TagsUpdated_ReplacesTheTagSet",
			given: []domain.Event{annCreated, domain.TagsUpdated{Tags: []domain.Tag{{ID: 5, Name: "VIP"}, {ID: 7, Name: "Trial"}}}},
			when:  domain.TagsUpdated{Tags: []domain.Tag{{ID: 9, Name: "Gold"}}, Added: []domain.Tag{{ID: 9, Name: "Gold"}}},
			want: &domain.User{
				UserID: "u-12", ContactID: stateContact, Login: "ann", Email: "ann@example.com",
				Role: "subscriber", PasswordHash: "$2a$hash", Meta: map[string]string{},
				Tags: []domain.Tag{{ID: 9, Name: "Gold"}}, CreatedAt: at(0), UpdatedAt: at(2),
			},
		},
		{
			name:  "TagsUpdated_EmptySet_ClearsTheTags",
			given: []domain.Event{annCreated, domain.TagsUpdated{Tags: []domain.Tag{{ID: 5, Name: "VIP"}}}},
			when:  domain.TagsUpdated{Tags: []domain.Tag{}, Removed: []domain.Tag{{ID: 5, Name: "VIP"}}},
			want: &domain.User{
				UserID: "u-12", ContactID: stateContact, Login: "ann", Email: "ann@example.com",
				Role: "subscriber", PasswordHash: "$2a$hash", Meta: map[string]string{},
				Tags: []domain.Tag{}, CreatedAt: at(0), UpdatedAt: at(2),
			},
		},
		{
			name:  "RoleChanged_GivesTheNewRole",
			given: []domain.Event{annCreated},
			when:  domain.RoleChanged{Old: "subscriber", New: "customer"},
			want: &domain.User{
				UserID: "u-12", ContactID: stateContact, Login: "ann", Email: "ann@example.com",
				Role: "customer", PasswordHash: "$2a$hash", Meta: map[string]string{},
				CreatedAt: at(0), UpdatedAt: at(1),
			},
		},
		{
			name:  "UserCreated_AfterUnlink_GivesTheContactAFreshUser",
			given: []domain.Event{annCreated, domain.RoleChanged{New: "customer"}, domain.UserUnlinked{UserID: "u-12", ToContactID: 99}},
			when:  domain.UserCreated{UserID: "u-new", ContactID: stateContact, Login: "ann2", Email: "ann2@example.com", Role: "subscriber"},
			want: &domain.User{
				UserID: "u-new", ContactID: stateContact, Login: "ann2", Email: "ann2@example.com",
				Role: "subscriber", Meta: map[string]string{}, CreatedAt: at(3), UpdatedAt: at(3),
			},
		},
		{
			name:  "MetaPulled_WithoutAUser_LeavesNoUser",
			given: []domain.Event{received("wh-1")},
			when:  domain.MetaPulled{Changes: []domain.MetaChange{{Key: "first_name", New: "Ann"}}},
			want:  nil,
		},
		{
			name:  "TagsUpdated_WithoutAUser_LeavesNoUser",
			given: []domain.Event{annCreated, domain.UserUnlinked{UserID: "u-12", ToContactID: 99}},
			when:  domain.TagsUpdated{Tags: []domain.Tag{{ID: 5, Name: "VIP"}}},
			want:  nil,
		},
		{
			name: "RoleChanged_WithoutAUser_LeavesNoUser",
			when: domain.RoleChanged{New: "customer"},
			want: nil,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := replay(append(slices.Clone(tt.given), tt.when)...)
			if !reflect.DeepEqual(s.User, tt.want) {
				t.Fatalf("user:\n got %+v\nwant %+v", s.User, tt.want)
			}
		})
	}
}

func TestApply_UserLinked_UserDoesNotShareTheEventsMetaOrTags(t *testing.T) {
	ev := domain.UserLinked{
		UserID: "u-7", ContactID: stateContact, FromContactID: 7,
		Meta: map[string]string{"first_name": "Ann"}, Tags: []domain.Tag{{ID: 5, Name: "VIP"}},
	}
	s := replay(ev)

	s.Apply(domain.Envelope{Event: domain.MetaPulled{Changes: []domain.MetaChange{{Key: "first_name", Old: "Ann", New: "Anne"}}}})
	s.User.Tags[0].Name = "changed"

	if ev.Meta["first_name"] != "Ann" || ev.Tags[0].Name != "VIP" {
		t.Fatalf("changing the user changed the recorded event: %+v", ev)
	}
}

func TestApply_TagsUpdated_UserDoesNotShareTheEventsTags(t *testing.T) {
	ev := domain.TagsUpdated{Tags: []domain.Tag{{ID: 5, Name: "VIP"}}}
	s := replay(annCreated, ev)

	s.User.Tags[0].Name = "changed"

	if ev.Tags[0].Name != "VIP" {
		t.Fatalf("changing the user changed the recorded event: %+v", ev)
	}
}

func TestApply_Passwords(t *testing.T) {
	issued := domain.PasswordIssued{KeyID: "k1", Field: "7", Sealed: []byte("sealed")}
	tests := []struct {
		name  string
		given []domain.Event
		when  domain.Event
		want  *domain.PasswordReturn
	}{
		{
			name:  "PasswordIssued_WaitsToBeReturned",
			given: []domain.Event{annCreated},
			when:  issued,
			want:  &domain.PasswordReturn{KeyID: "k1", Field: "7", Sealed: []byte("sealed"), IssuedAt: at(1)},
		},
		{
			name:  "PasswordReturnFailed_CountsTheAttemptAndKeepsWaiting",
			given: []domain.Event{annCreated, issued},
			when:  domain.PasswordReturnFailed{KeyID: "k1", Field: "7", Attempt: 1, Error: "503", NextAttemptAt: at(30)},
			want:  &domain.PasswordReturn{KeyID: "k1", Field: "7", Sealed: []byte("sealed"), Attempts: 1, IssuedAt: at(1), NextAttemptAt: at(30)},
		},
		{
			name: "PasswordReturnFailed_GaveUp_IsDone",
			given: []domain.Event{annCreated, issued,
				domain.PasswordReturnFailed{KeyID: "k1", Attempt: 1},
				domain.PasswordReturnFailed{KeyID: "k1", Attempt: 2}},
			when: domain.PasswordReturnFailed{KeyID: "k1", Field: "7", Attempt: 3, Error: "400", GaveUp: true},
			want: &domain.PasswordReturn{KeyID: "k1", Field: "7", Sealed: []byte("sealed"), Attempts: 3, Done: true, GaveUp: true, IssuedAt: at(1)},
		},
		{
			name:  "OperatorRetry_OfAPendingReturn_IsDueAtOnce",
			given: []domain.Event{annCreated, issued, domain.PasswordReturnFailed{KeyID: "k1", Field: "7", Attempt: 1, NextAttemptAt: at(30)}},
			when:  domain.OperatorActed{Action: domain.ActionRetryPasswordReturn},
			want:  &domain.PasswordReturn{KeyID: "k1", Field: "7", Sealed: []byte("sealed"), Attempts: 1, IssuedAt: at(1), NextAttemptAt: at(3)},
		},
		{
			name: "OperatorRetry_OfAGivenUpReturn_ChangesNothing",
			given: []domain.Event{annCreated, issued,
				domain.PasswordReturnFailed{KeyID: "k1", Field: "7", Attempt: 3, Error: "400", GaveUp: true}},
			when: domain.OperatorActed{Action: domain.ActionRetryPasswordReturn},
			want: &domain.PasswordReturn{KeyID: "k1", Field: "7", Sealed: []byte("sealed"), Attempts: 3, Done: true, GaveUp: true, IssuedAt: at(1)},
		},
		{
			name:  "PasswordReturned_IsDone",
			given: []domain.Event{annCreated, issued, domain.PasswordReturnFailed{KeyID: "k1", Attempt: 1}},
			when:  domain.PasswordReturned{KeyID: "k1", Field: "7", Attempt: 2},
			want:  &domain.PasswordReturn{KeyID: "k1", Field: "7", Sealed: []byte("sealed"), Attempts: 2, Done: true, IssuedAt: at(1)},
		},
		{
			name:  "PasswordReturned_ForAnotherKey_ChangesNothing",
			given: []domain.Event{annCreated, issued},
			when:  domain.PasswordReturned{KeyID: "k0", Field: "7", Attempt: 1},
			want:  &domain.PasswordReturn{KeyID: "k1", Field: "7", Sealed: []byte("sealed"), IssuedAt: at(1)},
		},
		{
			name:  "PasswordReturnFailed_ForAnotherKey_ChangesNothing",
			given: []domain.Event{annCreated, issued},
			when:  domain.PasswordReturnFailed{KeyID: "k0", Attempt: 4, GaveUp: true},
			want:  &domain.PasswordReturn{KeyID: "k1", Field: "7", Sealed: []byte("sealed"), IssuedAt: at(1)},
		},
		{
			name:  "PasswordIssued_Again_ReplacesTheEarlierPassword",
			given: []domain.Event{annCreated, issued, domain.PasswordReturnFailed{KeyID: "k1", Attempt: 3, GaveUp: true}},
			when:  domain.PasswordIssued{KeyID: "k2", Field: "8", Sealed: []byte("other")},
			want:  &domain.PasswordReturn{KeyID: "k2", Field: "8", Sealed: []byte("other"), IssuedAt: at(3)},
		},
		{
			name:  "PasswordReturnClaimed_HoldsTheAttempt",
			given: []domain.Event{annCreated, issued},
			when:  domain.PasswordReturnClaimed{KeyID: "k1", Field: "7", Attempt: 1, Until: at(10)},
			want: &domain.PasswordReturn{KeyID: "k1", Field: "7", Sealed: []byte("sealed"), IssuedAt: at(1),
				Claim: &domain.AttemptClaim{Attempt: 1, Until: at(10)}},
		},
		{
			name:  "PasswordReturnClaimed_ForAnotherKey_ChangesNothing",
			given: []domain.Event{annCreated, issued},
			when:  domain.PasswordReturnClaimed{KeyID: "k0", Field: "7", Attempt: 1, Until: at(10)},
			want:  &domain.PasswordReturn{KeyID: "k1", Field: "7", Sealed: []byte("sealed"), IssuedAt: at(1)},
		},
		{
			name: "PasswordReplaced_StartsAfreshUnderTheNewKeyAndSupersedesTheOld",
			given: []domain.Event{annCreated, issued,
				domain.PasswordReturnClaimed{KeyID: "k1", Field: "7", Attempt: 1, Until: at(3)}},
			when: domain.PasswordReplaced{OldKeyID: "k1", KeyID: "k2", Field: "7", Sealed: []byte("new"), PasswordHash: "$2a$new"},
			want: &domain.PasswordReturn{KeyID: "k2", Field: "7", Sealed: []byte("new"), IssuedAt: at(3), Superseded: []string{"k1"}},
		},
		{
			name:  "PasswordReplaced_OfAnotherKey_ChangesNothing",
			given: []domain.Event{annCreated, issued},
			when:  domain.PasswordReplaced{OldKeyID: "k0", KeyID: "k2", Field: "7", Sealed: []byte("new"), PasswordHash: "$2a$new"},
			want:  &domain.PasswordReturn{KeyID: "k1", Field: "7", Sealed: []byte("sealed"), IssuedAt: at(1)},
		},
		{
			name: "PasswordReturned_WithoutAnIssuedPassword_LeavesNone",
			when: domain.PasswordReturned{KeyID: "k1", Attempt: 1},
			want: nil,
		},
		{
			name: "PasswordReturnFailed_WithoutAnIssuedPassword_LeavesNone",
			when: domain.PasswordReturnFailed{KeyID: "k1", Attempt: 1},
			want: nil,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := replay(append(slices.Clone(tt.given), tt.when)...)
			if !reflect.DeepEqual(s.Password, tt.want) {
				t.Fatalf("password:\n got %+v\nwant %+v", s.Password, tt.want)
			}
		})
	}
}

func TestApply_PasswordReplaced_GivesTheUserTheNewHash(t *testing.T) {
	// Given a user with an issued password
	s := replay(annCreated, domain.PasswordIssued{KeyID: "k1", Field: "7"})

	// When another node replaces the password
	s.Apply(domain.Envelope{Event: domain.PasswordReplaced{OldKeyID: "k1", KeyID: "k2", Field: "7", PasswordHash: "$2a$new"}, OccurredAt: at(5)})

	// Then the user's hash is the replacement's
	if s.User == nil || s.User.PasswordHash != "$2a$new" || !s.User.UpdatedAt.Equal(at(5)) {
		t.Fatalf("user %+v", s.User)
	}
}

func TestApply_WelcomeMail(t *testing.T) {
	welcomed := annCreated
	welcomed.WelcomeEmail = true
	fresh := func() *domain.WelcomeMail {
		return &domain.WelcomeMail{UserID: "u-12", To: "ann@example.com", Login: "ann"}
	}
	tests := []struct {
		name  string
		given []domain.Event
		want  func() *domain.WelcomeMail
	}{
		{"UserCreated_WithoutTheEmail_AsksForNone", []domain.Event{annCreated}, func() *domain.WelcomeMail { return nil }},
		{"UserCreated_WithTheEmail_WaitsToBeSent", []domain.Event{welcomed}, fresh},
		{"WelcomeEmailClaimed_HoldsTheAttemptAndFixesTheMessageID", []domain.Event{welcomed,
			domain.WelcomeEmailClaimed{To: "ann@example.com", Attempt: 1, MessageID: "<m1@x>", Until: at(9)}},
			func() *domain.WelcomeMail {
				w := fresh()
				w.MessageID, w.Claim = "<m1@x>", &domain.AttemptClaim{Attempt: 1, Until: at(9)}
				return w
			}},
		{"WelcomeEmailClaimed_Again_KeepsTheFirstMessageID", []domain.Event{welcomed,
			domain.WelcomeEmailClaimed{To: "ann@example.com", Attempt: 1, MessageID: "<m1@x>", Until: at(9)},
			domain.WelcomeEmailClaimed{To: "ann@example.com", Attempt: 2, MessageID: "<other@x>", Until: at(19)}},
			func() *domain.WelcomeMail {
				w := fresh()
				w.MessageID, w.Claim = "<m1@x>", &domain.AttemptClaim{Attempt: 2, Until: at(19)}
				return w
			}},
		{"WelcomeEmailFailed_CountsTheAttempt", []domain.Event{welcomed,
			domain.WelcomeEmailFailed{To: "ann@example.com", Attempt: 1, NextAttemptAt: at(20)}},
			func() *domain.WelcomeMail { w := fresh(); w.Attempts, w.NextAttemptAt = 1, at(20); return w }},
		{"WelcomeEmailFailed_GaveUp_IsDone", []domain.Event{welcomed,
			domain.WelcomeEmailFailed{To: "ann@example.com", Attempt: 1, GaveUp: true}},
			func() *domain.WelcomeMail { w := fresh(); w.Attempts, w.Done, w.GaveUp = 1, true, true; return w }},
		{"OperatorRetry_OfAFailedMail_IsDueAtOnce", []domain.Event{welcomed,
			domain.WelcomeEmailFailed{To: "ann@example.com", Attempt: 1, NextAttemptAt: at(20)},
			domain.OperatorActed{Action: domain.ActionRetryWelcomeEmail}},
			func() *domain.WelcomeMail { w := fresh(); w.Attempts, w.NextAttemptAt = 1, at(2); return w }},
		{"OperatorRetry_OfAGivenUpMail_OpensItAgain", []domain.Event{welcomed,
			domain.WelcomeEmailFailed{To: "ann@example.com", Attempt: 5, GaveUp: true},
			domain.OperatorActed{Action: domain.ActionRetryWelcomeEmail}},
			func() *domain.WelcomeMail { w := fresh(); w.Attempts, w.NextAttemptAt = 5, at(2); return w }},
		{"OperatorRetry_OfASentMail_ChangesNothing", []domain.Event{welcomed,
			domain.WelcomeEmailSent{To: "ann@example.com", Transport: "smtp", Attempt: 1},
			domain.OperatorActed{Action: domain.ActionRetryWelcomeEmail}},
			func() *domain.WelcomeMail { w := fresh(); w.Attempts, w.Done = 1, true; return w }},
		{"OperatorRebuild_ChangesNothing", []domain.Event{welcomed, domain.OperatorActed{Action: "rebuild"}}, fresh},
		{"WelcomeEmailSent_IsDone", []domain.Event{welcomed,
			domain.WelcomeEmailSent{To: "ann@example.com", Transport: "smtp", Attempt: 1}},
			func() *domain.WelcomeMail { w := fresh(); w.Attempts, w.Done = 1, true; return w }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := replay(tt.given...)
			if want := tt.want(); !reflect.DeepEqual(s.Welcome, want) {
				t.Fatalf("welcome:\n got %+v\nwant %+v", s.Welcome, want)
			}
		})
	}
}

func TestApply_EventsThatAreNotTheAggregates_ChangeNothing(t *testing.T) {
	for _, e := range []domain.Event{
		domain.WelcomeEmailSent{To: "ann@example.com", Transport: "smtp", Attempt: 1},
		domain.WelcomeEmailFailed{To: "ann@example.com", Attempt: 1, GaveUp: true},
		domain.EmailReserved{Email: "ann@example.com", ContactID: stateContact, UserID: "u-12"},
		domain.EmailReleased{Email: "ann@example.com", ContactID: stateContact},
		domain.LoginReserved{Login: "ann", ContactID: stateContact, UserID: "u-12"},
	} {
		t.Run(e.EventType(), func(t *testing.T) {
			s := replay(received("wh-1"), annCreated, domain.PasswordIssued{KeyID: "k1"})
			want := replay(received("wh-1"), annCreated, domain.PasswordIssued{KeyID: "k1"})

			s.Apply(domain.Envelope{Event: e, OccurredAt: at(99)})

			if !reflect.DeepEqual(s, want) {
				t.Fatalf("state changed:\n got %+v\nwant %+v", s, want)
			}
		})
	}
}

func TestApply_DoesNotMoveTheVersion(t *testing.T) {
	s := domain.NewContactState(stateContact)
	s.Version = 4
	s.Apply(domain.Envelope{Event: received("wh-1")})
	if s.Version != 4 {
		t.Fatalf("version %d: the version is the store's, set by LoadContact", s.Version)
	}
}

func TestEvolveUser_ChangesTheUserInPlace(t *testing.T) {
	u := domain.EvolveUser(nil, stateContact, domain.Envelope{Event: annCreated, OccurredAt: at(0)})

	got := domain.EvolveUser(u, stateContact, domain.Envelope{Event: domain.RoleChanged{Old: "subscriber", New: "customer"}, OccurredAt: at(1)})

	if got != u {
		t.Fatal("EvolveUser returned a copy: the projection and the aggregate would disagree")
	}
	if u.Role != "customer" || !u.UpdatedAt.Equal(at(1)) || !u.CreatedAt.Equal(at(0)) {
		t.Fatalf("user %+v", u)
	}
}

func TestEvolveUser_UserCreated_BelongsToTheStreamsContact(t *testing.T) {
	ev := annCreated
	ev.ContactID = 99
	u := domain.EvolveUser(nil, stateContact, domain.Envelope{Event: ev})
	if u.ContactID != stateContact {
		t.Fatalf("contact %d, want the stream's contact %d", u.ContactID, stateContact)
	}
}

func TestEvolveUser_EventsNotAboutUsers_ReturnTheUserUntouched(t *testing.T) {
	u := domain.EvolveUser(nil, stateContact, domain.Envelope{Event: annCreated, OccurredAt: at(0)})
	want := *u
	for _, e := range []domain.Event{
		received("wh-1"),
		domain.WebhookProcessed{WebhookID: "wh-1"},
		domain.PasswordIssued{KeyID: "k1"},
		domain.WelcomeEmailSent{To: "ann@example.com"},
	} {
		if got := domain.EvolveUser(u, stateContact, domain.Envelope{Event: e, OccurredAt: at(5)}); got != u || !reflect.DeepEqual(*got, want) {
			t.Errorf("%s changed the user: %+v", e.EventType(), got)
		}
	}
	if got := domain.EvolveUser(nil, stateContact, domain.Envelope{Event: received("wh-1")}); got != nil {
		t.Errorf("a webhook made a user: %+v", got)
	}
}

// record encodes events as a store would return them from stateContact's
// stream, versions 1, 2, ...
func record(t *testing.T, events ...domain.Event) []domain.RecordedEvent {
	t.Helper()
	var out []domain.RecordedEvent
	for i, e := range events {
		ne, err := domain.Encode(domain.Envelope{Event: e, OccurredAt: at(i)})
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, domain.RecordedEvent{
			Position: uint64(100 + i), Stream: stateContact.Stream(), Version: uint64(i + 1),
			Type: ne.Type, Data: ne.Data, Metadata: ne.Metadata, RecordedAt: at(i),
		})
	}
	return out
}

func TestLoadContact_NoEvents_IsTheNewState(t *testing.T) {
	s, err := domain.LoadContact(stateContact, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(s, domain.NewContactState(stateContact)) {
		t.Fatalf("state %+v", s)
	}
}

func TestLoadContact_ReplaysTheStream(t *testing.T) {
	events := []domain.Event{
		received("wh-1"),
		annCreated,
		domain.TagsUpdated{Tags: []domain.Tag{{ID: 5, Name: "VIP"}}, Added: []domain.Tag{{ID: 5, Name: "VIP"}}},
		domain.MetaPulled{Changes: []domain.MetaChange{{Key: "first_name", New: "Ann"}}},
		domain.PasswordIssued{KeyID: "k1", Field: "7", Sealed: []byte{1, 2, 3}},
		domain.WebhookProcessed{WebhookID: "wh-1", Action: "add", UserID: "u-12"},
		received("wh-2"),
		domain.WebhookRetrying{WebhookID: "wh-2", Attempt: 1, NextAttemptAt: at(60)},
	}

	s, err := domain.LoadContact(stateContact, record(t, events...))
	if err != nil {
		t.Fatal(err)
	}

	if s.Version != uint64(len(events)) {
		t.Errorf("version %d, want the last event's, %d", s.Version, len(events))
	}
	if s.Open("wh-1") || !s.Open("wh-2") {
		t.Errorf("open: wh-1 %v, wh-2 %v; want false, true", s.Open("wh-1"), s.Open("wh-2"))
	}
	if len(s.Pending) != 1 || s.Pending[0].Attempts != 1 || !s.Pending[0].NextAttemptAt.Equal(at(60)) {
		t.Errorf("pending %+v", s.Pending)
	}
	u := s.User
	if u == nil || u.UserID != "u-12" || u.Meta["first_name"] != "Ann" ||
		!reflect.DeepEqual(u.Tags, []domain.Tag{{ID: 5, Name: "VIP"}}) ||
		!u.CreatedAt.Equal(at(1)) || !u.UpdatedAt.Equal(at(3)) {
		t.Errorf("user %+v", u)
	}
	if p := s.Password; p == nil || p.KeyID != "k1" || string(p.Sealed) != "\x01\x02\x03" || p.Done {
		t.Errorf("password %+v", p)
	}
}

func TestLoadContact_VersionIsTheStoresVersionOfTheLastEvent(t *testing.T) {
	recs := record(t, received("wh-1"), received("wh-2"))
	recs[0].Version, recs[1].Version = 40, 41

	s, err := domain.LoadContact(stateContact, recs)
	if err != nil {
		t.Fatal(err)
	}
	if s.Version != 41 {
		t.Fatalf("version %d, want 41", s.Version)
	}
}

func TestLoadContact_AnEventItCannotRead_IsAnError(t *testing.T) {
	unknown := record(t, received("wh-1"), annCreated)
	unknown[1].Type = "UserPromoted"

	newer := record(t, received("wh-1"))
	newer[0].Metadata = []byte(`{"schema":99,"occurred_at":"2026-03-01T09:00:00Z"}`)

	tests := []struct {
		name    string
		events  []domain.RecordedEvent
		wantErr error
	}{
		{"UnknownType", unknown, domain.ErrUnknownEventType},
		{"NewerSchema", newer, domain.ErrUnsupportedSchema},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := domain.LoadContact(stateContact, tt.events)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("err %v, want one matching %v", err, tt.wantErr)
			}
			if s != nil {
				t.Errorf("a half-loaded state was returned: %+v", s)
			}
			if !strings.Contains(err.Error(), "contact-12") {
				t.Errorf("error %q does not name the stream", err)
			}
		})
	}
}
