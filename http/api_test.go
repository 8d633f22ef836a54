package http

import (
	"context"
	nethttp "net/http"
	"path/filepath"
	"testing"
	"time"

	"github.com/usersync/usersync/domain"
	"github.com/usersync/usersync/projections"
)

// A receipt past the retention is no longer in the view: GET
// /api/webhooks/{id} folds it from the log, with the fields the view had.
func TestGetWebhook_PastTheRetentionAnswersFromTheLog(t *testing.T) {
	ctx := context.Background()
	cfg := testConfig(t, slogJSON(&syncBuffer{}))
	views, err := projections.Open(ctx, filepath.Join(t.TempDir(), "views.db"), projections.WithReceiptRetention(24*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	defer views.Close()
	cfg.Views = views
	long := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	raw, err := domain.EncodeAll([]domain.Envelope{
		{Event: domain.WebhookReceived{WebhookID: "old", Action: "add", ContactID: "7", Params: map[string]string{}, Method: "GET", ReceivedAt: long}, OccurredAt: long},
		{Event: domain.WebhookProcessed{WebhookID: "old", Action: "add", Message: "User created"}, OccurredAt: long.Add(time.Second)},
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cfg.Store.Append(ctx, "contact-7", domain.NoStream(), raw...); err != nil {
		t.Fatal(err)
	}
	recs, err := cfg.Store.ReadAll(ctx, 0, 10)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := views.HandleBatch(ctx, recs); err != nil {
		t.Fatal(err)
	}
	if _, kept, err := views.Webhooks.Get(ctx, "old"); err != nil || kept {
		t.Fatalf("the view still keeps the old receipt (%v): the test proves nothing", err)
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	base := serve(t, s)
	var got projections.Webhook
	if code := api(t, "GET", base+"/api/webhooks/old", &got); code != nethttp.StatusOK {
		t.Fatalf("GET: %d %+v", code, got)
	}
	want := projections.Webhook{ID: "old", Action: "add", ContactID: 7, Status: projections.WebhookProcessed, Message: "User created",
		ReceivedAt: long, UpdatedAt: long.Add(time.Second)}
	if got != want {
		t.Fatalf("receipt %+v, want %+v", got, want)
	}
	var miss map[string]any
	if code := api(t, "GET", base+"/api/webhooks/never", &miss); code != nethttp.StatusNotFound {
		t.Fatalf("unknown webhook: %d %v", code, miss)
	}
}
