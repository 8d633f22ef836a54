package domain_test

import (
	"testing"
	"time"

	"github.com/usersync/usersync/domain"
)

// BenchmarkDecode decodes the stored events a webhook appends most, one
// type at a time, and then a mix of them with a Decoder (as a rebuild does).
func BenchmarkDecode(b *testing.B) {
	at := time.Date(2026, 1, 5, 8, 0, 0, 0, time.UTC)
	var recs []domain.RecordedEvent
	for _, e := range []domain.Event{
		domain.WebhookReceived{WebhookID: "01a21e0c-f607-7c4b-a28b-3719ffeb31e4", Action: "update_tags", ContactID: "12", Params: map[string]string{"send_notification": "1"}, Method: "GET", Source: "127.0.0.1", ReceivedAt: at},
		domain.TagsUpdated{Tags: []domain.Tag{{ID: 5, Name: "VIP"}, {ID: 7, Name: "Trial"}}, Added: []domain.Tag{{ID: 7, Name: "Trial"}}, Removed: []domain.Tag{{ID: 9, Name: "Gold"}}},
		domain.WebhookProcessed{WebhookID: "01a21e0c-f607-7c4b-a28b-3719ffeb31e4", Action: "update_tags", Message: "User updated", UserID: "482d3607-0e69-442e-8ab5-dd1d4efd5fea", Changed: []string{"TagsUpdated"}},
	} {
		ne, err := domain.Encode(domain.Envelope{Event: e, OccurredAt: at, WebhookID: "01a21e0c-f607-7c4b-a28b-3719ffeb31e4"})
		if err != nil {
			b.Fatal(err)
		}
		recs = append(recs, domain.RecordedEvent{Stream: "contact-12", Type: ne.Type, Data: ne.Data, Metadata: ne.Metadata})
	}
	for _, rec := range recs {
		b.Run(rec.Type, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := domain.Decode(rec); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
	b.Run("Decoder", func(b *testing.B) {
		b.ReportAllocs()
		d := domain.NewDecoder()
		i := 0
		for b.Loop() {
			if _, err := d.Decode(recs[i%len(recs)]); err != nil {
				b.Fatal(err)
			}
			i++
		}
	})
}

func BenchmarkDecodeMetadata(b *testing.B) {
	ne, _ := domain.Encode(domain.Envelope{Event: domain.RoleChanged{Old: "a", New: "b"}, OccurredAt: time.Now(), WebhookID: "01a21e0c-f607-7c4b-a28b-3719ffeb31e4"})
	rec := domain.RecordedEvent{Type: ne.Type, Data: ne.Data, Metadata: ne.Metadata}
	for b.Loop() {
		if _, err := domain.Decode(rec); err != nil {
			b.Fatal(err)
		}
	}
}
