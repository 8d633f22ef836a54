package pipeline_test

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/usersync/usersync/domain"
	"github.com/usersync/usersync/eventstore/eventstoretest"
	"github.com/usersync/usersync/eventstore/memory"
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

func receive(t *testing.T, ch <-chan *message.Message) *message.Message {
	t.Helper()
	select {
	case msg, ok := <-ch:
		if !ok {
			t.Fatal("subscription ended")
		}
		return msg
	case <-time.After(10 * time.Second):
		t.Fatal("no message")
	}
	return nil
}

func TestSubscriber_FromCheckpointOneAtATimeRedeliversNacked(t *testing.T) {
	ctx := context.Background()
	store := memory.New()
	defer store.Close()
	if _, err := store.Append(ctx, "s", domain.NoStream(), eventstoretest.Events("E", 4)...); err != nil {
		t.Fatal(err)
	}
	sub := pipeline.NewSubscriber(store, func(_ context.Context, topic string) (uint64, error) {
		if topic != "views" {
			t.Errorf("checkpoint asked for topic %q", topic)
		}
		return 1, nil
	}, quietLog())
	if name := sub.String(); name != "projections.Subscriber" {
		t.Errorf("subscriber name %q: the subscriber_name metric label changes", name)
	}
	ch, err := sub.Subscribe(ctx, "views")
	if err != nil {
		t.Fatal(err)
	}
	msg := receive(t, ch)
	if rec, _ := pipeline.FromMessage(msg); rec.Position != 2 {
		t.Fatalf("first message is event %d, want 2 (after the checkpoint)", rec.Position)
	}
	select {
	case extra := <-ch:
		t.Fatalf("message %s sent before the previous one was acked", extra.UUID)
	default:
	}
	msg.Nack()
	again := receive(t, ch)
	if rec, _ := pipeline.FromMessage(again); rec.Position != 2 {
		t.Fatalf("after a nack got event %d, want 2 again", rec.Position)
	}
	again.Ack()
	next := receive(t, ch)
	if rec, _ := pipeline.FromMessage(next); rec.Position != 3 {
		t.Fatalf("after an ack got event %d, want 3", rec.Position)
	}
	if err := sub.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case _, ok := <-ch:
		if ok {
			t.Fatal("message after Close")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not end the subscription")
	}
	if _, err := sub.Subscribe(ctx, "views"); err == nil {
		t.Fatal("Subscribe after Close succeeded")
	}
}
