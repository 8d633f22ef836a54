package memory_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/usersync/usersync/domain"
	"github.com/usersync/usersync/eventstore"
	"github.com/usersync/usersync/eventstore/eventstoretest"
	"github.com/usersync/usersync/eventstore/memory"
)

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestConformance(t *testing.T) {
	t.Parallel()
	eventstoretest.Run(t, eventstoretest.Features{DensePositions: true}, func(t *testing.T) eventstore.Store {
		s := memory.New()
		t.Cleanup(func() { s.Close() })
		return s
	})
}

func TestBytesAreCopied(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	s := memory.New()
	defer s.Close()
	data, meta := []byte(`{"n":1}`), []byte(`{"schema":1}`)
	if _, err := s.Append(ctx, "a", domain.NoStream(), domain.NewEvent{Type: "E", Data: data, Metadata: meta}); err != nil {
		t.Fatal(err)
	}
	data[2], meta[2] = 'X', 'X' // the caller reuses its buffers

	reads := []struct {
		name string
		read func() ([]domain.RecordedEvent, error)
	}{
		{"ReadStream", func() ([]domain.RecordedEvent, error) { return s.ReadStream(ctx, "a") }},
		{"ReadAll", func() ([]domain.RecordedEvent, error) { return s.ReadAll(ctx, 0, 10) }},
	}
	for _, r := range reads {
		evs, err := r.read()
		if err != nil {
			t.Fatalf("%s: %v", r.name, err)
		}
		if len(evs) != 1 || string(evs[0].Data) != `{"n":1}` || string(evs[0].Metadata) != `{"schema":1}` {
			t.Fatalf("%s after the caller changed its buffers = %+v", r.name, evs)
		}
		evs[0].Data[2], evs[0].Metadata[2] = 'Y', 'Y' // a reader scribbles on what it got
	}
	evs, err := s.ReadAll(ctx, 0, 10)
	if err != nil {
		t.Fatal(err)
	}
	if string(evs[0].Data) != `{"n":1}` || string(evs[0].Metadata) != `{"schema":1}` {
		t.Fatalf("stored event changed by a reader: %+v", evs[0])
	}
}

func TestClosed(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	s := memory.New()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	ops := []struct {
		name string
		op   func() error
	}{
		{"Append", func() error {
			_, err := s.Append(ctx, "a", domain.AnyVersion(), eventstoretest.Event("E", 1))
			return err
		}},
		{"ReadStream", func() error { _, err := s.ReadStream(ctx, "a"); return err }},
		{"ReadAll", func() error { _, err := s.ReadAll(ctx, 0, 1); return err }},
		{"Head", func() error { _, err := s.Head(ctx); return err }},
	}
	for _, op := range ops {
		if err := op.op(); !errors.Is(err, eventstore.ErrClosed) {
			t.Errorf("%s after Close: err = %v, want ErrClosed", op.name, err)
		}
	}
	if err := s.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

// BenchmarkSmallStore is the cost of what a unit test does with a store: a
// few dozen appends over a handful of streams, then a replay.
func BenchmarkSmallStore(b *testing.B) {
	ctx := context.Background()
	for b.Loop() {
		s := memory.New()
		for i := range 48 {
			if _, err := s.Append(ctx, []string{"a", "b", "c", "d"}[i%4], domain.AnyVersion(), eventstoretest.Event("E", i)); err != nil {
				b.Fatal(err)
			}
		}
		if evs, err := s.ReadAll(ctx, 0, 100); err != nil || len(evs) != 48 {
			b.Fatalf("ReadAll = %d events, %v", len(evs), err)
		}
		s.Close()
	}
}
