package domain_test

import (
	"bytes"
	"reflect"
	"testing"
	"time"

	"github.com/usersync/usersync/domain"
)

func TestEncodeAll_EncodesEachEnvelopeInOrder(t *testing.T) {
	when := time.Date(2026, 3, 1, 9, 0, 0, 0, time.UTC)
	in := []domain.Envelope{
		{Event: domain.UserCreated{UserID: "u-12", ContactID: 12, Login: "ann", Email: "ann@example.com", Role: "subscriber"}, OccurredAt: when, WebhookID: "wh-1"},
		{Event: domain.TagsUpdated{Tags: []domain.Tag{{ID: 5, Name: "VIP"}}, Added: []domain.Tag{{ID: 5, Name: "VIP"}}}, OccurredAt: when, WebhookID: "wh-1"},
		{Event: domain.WebhookProcessed{WebhookID: "wh-1", Action: "add", UserID: "u-12", Changed: []string{"UserCreated", "TagsUpdated"}}, OccurredAt: when.Add(time.Second), WebhookID: "wh-1"},
	}

	got, err := domain.EncodeAll(in)
	if err != nil {
		t.Fatal(err)
	}

	if len(got) != len(in) {
		t.Fatalf("%d events for %d envelopes", len(got), len(in))
	}
	for i, e := range in {
		one, err := domain.Encode(e)
		if err != nil {
			t.Fatal(err)
		}
		if got[i].Type != one.Type || !bytes.Equal(got[i].Data, one.Data) || !bytes.Equal(got[i].Metadata, one.Metadata) {
			t.Errorf("event %d: EncodeAll gave %s %s %s, Encode %s %s %s", i, got[i].Type, got[i].Data, got[i].Metadata, one.Type, one.Data, one.Metadata)
		}
		back, err := domain.Decode(domain.RecordedEvent{Stream: "contact-12", Version: uint64(i + 1), Type: got[i].Type, Data: got[i].Data, Metadata: got[i].Metadata})
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(back.Event, e.Event) || !back.OccurredAt.Equal(e.OccurredAt) || back.WebhookID != e.WebhookID {
			t.Errorf("event %d decodes to %+v, want %+v", i, back, e)
		}
	}
}

func TestEncodeAll_NoEnvelopes_NoEvents(t *testing.T) {
	got, err := domain.EncodeAll(nil)
	if err != nil || len(got) != 0 {
		t.Fatalf("got %v, %v", got, err)
	}
}

func TestEncodeAll_AnEnvelopeWithoutAnEvent_FailsTheWholeBatch(t *testing.T) {
	in := []domain.Envelope{
		{Event: domain.RoleChanged{Old: "subscriber", New: "customer"}},
		{},
		{Event: domain.RoleChanged{Old: "customer", New: "subscriber"}},
	}
	got, err := domain.EncodeAll(in)
	if err == nil {
		t.Fatal("no error")
	}
	if got != nil {
		t.Fatalf("a partial batch was returned: %d events", len(got))
	}
}
