package command

import (
	"context"
	"fmt"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/usersync/usersync/domain"
	"github.com/usersync/usersync/eventstore"
)

// BenchmarkProcessWebhook is the cost of processing one update_tags
// webhook for a contact that already has history events, on the real
// embedded store and a fake FunnelKit. The webhook's record is not timed.
// The cost must not grow with the history:
//
//	go test -run '^$' -bench BenchmarkProcessWebhook -benchtime 500x -count 6 ./domain/command/
//
// cpu-ns/op is the CPU the process spent per webhook; ns/op includes the
// wait for the outcome's fsync, which dominates on most disks.
func BenchmarkProcessWebhook(b *testing.B) {
	for _, history := range []int{10, 1000} {
		b.Run("history="+strconv.Itoa(history), func(b *testing.B) { benchProcessWebhook(b, history) })
	}
}

func benchProcessWebhook(b *testing.B, history int) {
	ctx := context.Background()
	store, err := eventstore.Open(ctx, filepath.Join(b.TempDir(), "events.db"))
	if err != nil {
		b.Fatal(err)
	}
	defer store.Close()
	crm := &fakeCRM{contacts: map[domain.ContactID]domain.CRMContact{}}
	ids := 0
	proc, err := NewProcessWebhook(ProcessWebhookConfig{
		Policy: testPolicy(), Store: store, CRM: crm, Secrets: &fakeSecrets{keys: map[string]string{}},
		NewID: func() string { ids++; return "id" + strconv.Itoa(ids) },
		Retry: domain.Backoff{Initial: time.Second, Max: time.Minute},
	})
	if err != nil {
		b.Fatal(err)
	}
	// Enough contacts that the timed webhooks add little to each history.
	contacts := max(20, 200_000/history)
	contacts = min(contacts, 1000)
	vip, trial := domain.Tag{ID: 1, Name: "VIP"}, domain.Tag{ID: 2, Name: "Trial"}
	now := time.Now()
	enc := func(stream string, envs ...domain.Envelope) {
		raw, err := domain.EncodeAll(envs)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := store.Append(ctx, stream, domain.AnyVersion(), raw...); err != nil {
			b.Fatal(err)
		}
	}
	for i := 1; i <= contacts; i++ {
		id := domain.ContactID(i)
		email := fmt.Sprintf("c%d@example.com", i)
		crm.contacts[id] = contact(id, email, vip)
		envs := []domain.Envelope{{Event: domain.UserCreated{UserID: "u" + id.String(), ContactID: id, Login: email, Email: email, Role: "subscriber", PasswordHash: "h"}, OccurredAt: now}}
		// The history: webhooks processed long ago, two events each.
		for n := 0; len(envs) < history; n++ {
			wh := "old-" + id.String() + "-" + strconv.Itoa(n)
			envs = append(envs,
				domain.Envelope{Event: domain.WebhookReceived{WebhookID: wh, Action: domain.ActionUpdateTags, ContactID: id.String(), Method: "POST", ReceivedAt: now}, OccurredAt: now, WebhookID: wh},
				domain.Envelope{Event: domain.WebhookProcessed{WebhookID: wh, Action: domain.ActionUpdateTags, Message: "No changes", UserID: "u" + id.String()}, OccurredAt: now, WebhookID: wh})
		}
		enc(id.Stream(), envs...)
		enc(domain.EmailStream(email), domain.Envelope{Event: domain.EmailReserved{Email: email, ContactID: id, UserID: "u" + id.String()}, OccurredAt: now})
		enc(domain.LoginStream(email), domain.Envelope{Event: domain.LoginReserved{Login: email, ContactID: id, UserID: "u" + id.String()}, OccurredAt: now})
	}
	// The same size of store for every history, so that the store's
	// size and its background work do not differ between them.
	filler := make([]domain.Envelope, 4096)
	for i := range filler {
		filler[i] = domain.Envelope{Event: domain.WelcomeEmailSent{}, OccurredAt: now}
	}
	for n := contacts * history; n < 200_000; n += len(filler) {
		enc("filler", filler...)
	}
	hook := 0
	var cpu time.Duration
	process := func(id domain.ContactID) {
		hook++
		wh := "wh" + strconv.Itoa(hook)
		enc(id.Stream(), domain.Envelope{Event: domain.WebhookReceived{WebhookID: wh, Action: domain.ActionUpdateTags, ContactID: id.String(), Method: "POST", ReceivedAt: now}, OccurredAt: now, WebhookID: wh})
		// Each webhook changes the tags: an event and the outcome.
		tags := []domain.Tag{vip}
		if hook%2 == 0 {
			tags = []domain.Tag{vip, trial}
		}
		crm.set(contact(id, fmt.Sprintf("c%d@example.com", id), tags...))
		cpu0 := cpuTime()
		b.StartTimer()
		out, ok, err := proc.Next(ctx, id)
		b.StopTimer()
		cpu += cpuTime() - cpu0
		if err != nil || !ok || out.Status != StatusProcessed {
			b.Fatalf("webhook %s: %+v %v %v", wh, out, ok, err)
		}
	}
	b.StopTimer()
	// Warm up: every contact once, as a running server has.
	for i := 1; i <= contacts; i++ {
		process(domain.ContactID(i))
	}
	b.ReportAllocs()
	b.ResetTimer()
	b.StopTimer()
	cpu = 0
	for i := range b.N {
		process(domain.ContactID(i%contacts + 1))
	}
	// The process's CPU (every goroutine: the store's writer too) per
	// webhook: unlike ns/op, it does not wait for the disk's fsync.
	b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N), "cpu-ns/op")
}
