package main

import (
	"context"
	"errors"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"github.com/usersync/usersync/domain"
	"github.com/usersync/usersync/domain/command"
	"github.com/usersync/usersync/eventstore"
	"github.com/usersync/usersync/projections"
)

// TestViewOutcomes_AnswerTheFirstOutcome: a synchronous answer waited on
// the views is the webhook's first outcome, as on one node, even when the
// views applied its retry and its final outcome in one batch (the receipt
// then only says the latest).
func TestViewOutcomes_AnswerTheFirstOutcome(t *testing.T) {
	at := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	received := func(id string) domain.Event {
		return domain.WebhookReceived{WebhookID: id, Action: "update_tags", ContactID: "1", ReceivedAt: at}
	}
	tests := []struct {
		name     string
		outcomes []domain.Event // after the WebhookReceived, all in one batch
		status   string
		message  string
		kind     error // errors.Is of the Outcome's Err; nil for none
	}{
		{"processed at once", []domain.Event{
			domain.WebhookProcessed{WebhookID: "w1", Action: "update_tags", Message: "Tags updated"},
		}, command.StatusProcessed, "Tags updated", nil},
		{"retried, then processed", []domain.Event{
			domain.WebhookRetrying{WebhookID: "w1", Attempt: 1, Error: "FunnelKit unreachable", NextAttemptAt: at},
			domain.WebhookProcessed{WebhookID: "w1", Action: "update_tags", Message: "No changes"},
		}, command.StatusRetrying, "FunnelKit unreachable", domain.ErrCRMUnavailable},
		{"still retrying", []domain.Event{
			domain.WebhookRetrying{WebhookID: "w1", Attempt: 1, Error: "FunnelKit unreachable", NextAttemptAt: at},
		}, command.StatusRetrying, "FunnelKit unreachable", domain.ErrCRMUnavailable},
		{"failed with the CRM's refusal", []domain.Event{
			domain.WebhookFailed{WebhookID: "w1", Action: "update_tags", Reason: "FunnelKit refused", Status: 502},
		}, command.StatusFailed, "FunnelKit refused", domain.ErrCRMRefused},
		{"retried, then failed as invalid", []domain.Event{
			domain.WebhookRetrying{WebhookID: "w1", Attempt: 1, Error: "FunnelKit unreachable", NextAttemptAt: at},
			domain.WebhookFailed{WebhookID: "w1", Action: "update_tags", Reason: "bad", Status: 400},
		}, command.StatusRetrying, "FunnelKit unreachable", domain.ErrCRMUnavailable},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			dir := t.TempDir()
			store, err := eventstore.Open(ctx, filepath.Join(dir, "events.db"))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { store.Close() })
			views, err := projections.Open(ctx, filepath.Join(dir, "views.db"))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { views.Close() })

			// Another webhook's outcome first: only w1's counts.
			envs := []domain.Envelope{{Event: received("w0"), OccurredAt: at, WebhookID: "w0"},
				{Event: domain.WebhookIgnored{WebhookID: "w0", Action: "update_tags", Reason: "other"}, OccurredAt: at, WebhookID: "w0"},
				{Event: received("w1"), OccurredAt: at, WebhookID: "w1"}}
			for _, e := range tt.outcomes {
				envs = append(envs, domain.Envelope{Event: e, OccurredAt: at, WebhookID: "w1"})
			}
			evs, err := domain.EncodeAll(envs)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := store.Append(ctx, domain.ContactID(1).Stream(), domain.NoStream(), evs...); err != nil {
				t.Fatal(err)
			}
			all, err := store.ReadAll(ctx, 0, 100)
			if err != nil {
				t.Fatal(err)
			}
			if parked, err := views.Batch().HandleBatch(ctx, all); err != nil || len(parked) > 0 {
				t.Fatalf("apply: %v, parked %v", err, parked)
			}

			wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			out, err := viewOutcomes{views: views, store: store}.WaitOutcome(wctx, "w1")
			if err != nil {
				t.Fatal(err)
			}
			if out.Status != tt.status || out.Message != tt.message || out.WebhookID != "w1" || out.ContactID != 1 {
				t.Fatalf("outcome %+v, want %s %q", out, tt.status, tt.message)
			}
			if (tt.kind == nil) != (out.Err == nil) || (tt.kind != nil && !errors.Is(out.Err, tt.kind)) {
				t.Fatalf("outcome error %v, want %v", out.Err, tt.kind)
			}
		})
	}
}

func TestStaleSweep_OldestOpenWebhookPastTheTakeOver(t *testing.T) {
	now := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	ago := func(d time.Duration) time.Time { return now.Add(-d) }
	c := staleSweep{After: time.Minute, RetryMax: 5 * time.Minute}
	tests := []struct {
		name string
		open []projections.Webhook
		want []domain.ContactID
	}{
		{"nothing open", nil, nil},
		{"queued, young", []projections.Webhook{{ContactID: 1, Status: projections.WebhookQueued, ReceivedAt: ago(59 * time.Second)}}, nil},
		{"queued past the take-over", []projections.Webhook{{ContactID: 1, Status: projections.WebhookQueued, ReceivedAt: ago(61 * time.Second)}}, []domain.ContactID{1}},
		{"retrying, its wait not over", []projections.Webhook{{ContactID: 2, Status: projections.WebhookRetrying, ReceivedAt: ago(time.Hour), UpdatedAt: ago(5 * time.Minute)}}, nil},
		{"retrying past its longest wait and the take-over", []projections.Webhook{{ContactID: 2, Status: projections.WebhookRetrying, ReceivedAt: ago(time.Hour), UpdatedAt: ago(6*time.Minute + time.Second)}}, []domain.ContactID{2}},
		{"only a contact's oldest open webhook counts", []projections.Webhook{
			{ContactID: 3, Status: projections.WebhookQueued, ReceivedAt: ago(10 * time.Second)},
			{ContactID: 3, Status: projections.WebhookQueued, ReceivedAt: ago(2 * time.Minute)},
		}, nil},
		{"each contact once", []projections.Webhook{
			{ContactID: 4, Status: projections.WebhookQueued, ReceivedAt: ago(3 * time.Minute)},
			{ContactID: 5, Status: projections.WebhookQueued, ReceivedAt: ago(2 * time.Minute)},
			{ContactID: 4, Status: projections.WebhookQueued, ReceivedAt: ago(time.Minute + time.Second)},
		}, []domain.ContactID{4, 5}},
		{"a refused webhook without a contact", []projections.Webhook{{ContactID: 0, Status: projections.WebhookQueued, ReceivedAt: ago(time.Hour)}}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := c.stale(tt.open, now); !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("stale = %v, want %v", got, tt.want)
			}
		})
	}
}
