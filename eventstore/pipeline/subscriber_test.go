package pipeline_test

import (
	"bytes"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/usersync/usersync/domain"
	"github.com/usersync/usersync/eventstore/pipeline"
)

func TestMessage_RoundTrip(t *testing.T) {
	at := time.Date(2026, 1, 2, 10, 0, 0, 123456789, time.UTC)
	tests := []struct {
		name string
		rec  domain.RecordedEvent
	}{
		{"full", domain.RecordedEvent{Position: 42, Stream: "contact-7", Version: 3, Type: "RoleChanged",
			Data: []byte(`{"old":"a","new":"b"}`), Metadata: []byte(`{"schema":1}`), RecordedAt: at}},
		{"bare", domain.RecordedEvent{Position: 1, Stream: "s", Version: 1, Type: "T", RecordedAt: at}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := pipeline.FromMessage(pipeline.ToMessage(tc.rec))
			if err != nil {
				t.Fatal(err)
			}
			if got.Position != tc.rec.Position || got.Stream != tc.rec.Stream || got.Version != tc.rec.Version ||
				got.Type != tc.rec.Type || !bytes.Equal(got.Data, tc.rec.Data) || !bytes.Equal(got.Metadata, tc.rec.Metadata) ||
				!got.RecordedAt.Equal(tc.rec.RecordedAt) {
				t.Fatalf("round trip of %+v gave %+v", tc.rec, got)
			}
		})
	}
	if _, err := pipeline.FromMessage(message.NewMessage("x", nil)); err == nil {
		t.Fatal("FromMessage accepted a message without metadata")
	}
}
