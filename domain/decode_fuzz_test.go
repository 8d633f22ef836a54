package domain

import (
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"
)

// FuzzDecode feeds Decode any type, data and metadata. It never panics;
// the fast path and the JSON decoder agree on the data; an error names the
// event's type or its metadata, and an unknown type matches
// ErrUnknownEventType; a decoded event encodes and decodes to itself.
func FuzzDecode(f *testing.F) {
	at := time.Date(2026, 1, 5, 8, 0, 0, 123456789, time.UTC)
	for i, e := range hotEvents() {
		ne, err := Encode(Envelope{Event: e, OccurredAt: at.Add(time.Duration(i) * time.Hour), WebhookID: "w-1"})
		if err != nil {
			f.Fatal(err)
		}
		f.Add(ne.Type, ne.Data, ne.Metadata)
	}
	f.Add(TypeRoleChanged, []byte(`{"old":"subscriber","new":"customer"}`), []byte(`{"schema":1,"occurred_at":"2026-01-05T08:00:00+02:00"}`))
	f.Add(TypePasswordIssued, []byte(`{"key_id":"k","sealed":"AAEC","field":"10"}`), []byte(`{"webhook_id":"w","schema":1,"occurred_at":"2026-01-05T08:00:00Z"}`))
	f.Add(TypeUserCreated, []byte(`{}`), []byte(`{"schema":2,"occurred_at":"2026-01-05T08:00:00Z"}`))
	f.Add("Nope", []byte(`{}`), []byte(`{"schema":1,"occurred_at":"2026-01-05T08:00:00Z"}`))
	f.Add(TypeTagsUpdated, []byte(`{"tags":[{"id":1,"name":"a"}]`), []byte(`not json`))
	f.Fuzz(func(t *testing.T, typ string, data, metadata []byte) {
		checkFast(t, typ, data)
		rec := RecordedEvent{Position: 9, Stream: "contact-7", Version: 3, Type: typ, Data: data, Metadata: metadata}
		env, err := Decode(rec)
		if err != nil {
			if msg := err.Error(); !strings.Contains(msg, "contact-7") || !strings.HasPrefix(msg, "decode ") {
				t.Fatalf("error %q does not name the event", msg)
			}
			if newEvent(typ) == nil && !errors.Is(err, ErrUnknownEventType) && !strings.Contains(err.Error(), "metadata") &&
				!errors.Is(err, ErrUnsupportedSchema) {
				t.Fatalf("unknown type %q: %v", typ, err)
			}
			return
		}
		if env.Event == nil || env.Event.EventType() != typ {
			t.Fatalf("%q decoded as %#v", typ, env.Event)
		}
		if k := reflect.TypeOf(env.Event).Kind(); k == reflect.Pointer {
			t.Fatalf("%q decoded as a pointer %T", typ, env.Event)
		}
		again, err := Decode(encoded(t, env))
		if err != nil {
			return // an occurred_at JSON cannot write (a year past 9999): Encode refused it
		}
		back, err := Decode(encoded(t, again))
		if err != nil {
			t.Fatalf("%#v encodes to what does not decode: %v", again, err)
		}
		if !reflect.DeepEqual(back, again) {
			t.Fatalf("round trip:\n%#v\n%#v", again, back)
		}
		if !again.OccurredAt.Equal(env.OccurredAt) || again.WebhookID != env.WebhookID {
			t.Fatalf("metadata round trip: %+v became %+v", env, again)
		}
	})
}

// encoded is env as the store returns it after an append; an envelope
// Encode refuses gives a record Decode refuses.
func encoded(t *testing.T, env Envelope) RecordedEvent {
	t.Helper()
	ne, err := Encode(env)
	if err != nil {
		return RecordedEvent{Stream: "contact-7", Type: "\x00unencodable"}
	}
	return RecordedEvent{Position: 9, Stream: "contact-7", Version: 3, Type: ne.Type, Data: ne.Data, Metadata: ne.Metadata}
}
