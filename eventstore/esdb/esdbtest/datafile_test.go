package esdbtest_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/EventStore/EventStore-Client-Go/v4/esdb"

	"github.com/usersync/usersync/eventstore/esdb/esdbtest"
)

func startWithFile(t *testing.T, path string) *esdbtest.Server {
	t.Helper()
	srv, err := esdbtest.Start(esdbtest.Options{DataFile: path})
	if err != nil {
		t.Fatalf("start with %s: %v", path, err)
	}
	return srv
}

func TestDataFile_ReloadedAtStart(t *testing.T) {
	path := filepath.Join(t.TempDir(), "standin.jsonl")
	srv := startWithFile(t, path)
	c := newClient(t, srv)
	mustAppend(t, c, "kept", esdb.NoStream{}, events("K", 3)...)
	mustAppend(t, c, "soft", esdb.NoStream{}, event("S"))
	if _, err := c.DeleteStream(ctxFor(t), "soft", esdb.DeleteStreamOptions{}); err != nil {
		t.Fatal(err)
	}
	mustAppend(t, c, "hard", esdb.NoStream{}, event("H"))
	if _, err := c.TombstoneStream(ctxFor(t), "hard", esdb.TombstoneStreamOptions{}); err != nil {
		t.Fatal(err)
	}
	before := readAll(t, c, esdb.ReadAllOptions{From: esdb.Start{}}, 1000)
	head := srv.Head()
	if err := srv.Close(); err != nil {
		t.Fatal(err)
	}
	// a write cut short by a crash leaves half a line at the end
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString(`{"stream":"kept","revi`); err != nil {
		t.Fatal(err)
	}
	_ = f.Close()

	again := startWithFile(t, path)
	defer again.Close()
	c2 := newClient(t, again)
	after := readAll(t, c2, esdb.ReadAllOptions{From: esdb.Start{}}, 1000)
	if len(after) != len(before)+1 || after[len(before)].Event.StreamID != "$epoch-information" {
		t.Fatalf("reloaded $all has %d events, want the %d before and a new epoch", len(after), len(before))
	}
	for i := range before {
		b, a := before[i].Event, after[i].Event
		if a.EventID != b.EventID || a.Position != b.Position || !a.CreatedDate.Equal(b.CreatedDate) || string(a.Data) != string(b.Data) {
			t.Fatalf("event %d reloaded as %+v, want %+v", i, a, b)
		}
	}
	if got, err := readStream(t, c2, "kept", esdb.ReadStreamOptions{}, 10); err != nil || len(got) != 3 {
		t.Fatalf("kept: %v %d events", err, len(got))
	}
	if _, err := readStream(t, c2, "soft", esdb.ReadStreamOptions{}, 10); errCode(err) != esdb.ErrorCodeResourceNotFound {
		t.Fatalf("soft-deleted stream after reload: %v", err)
	}
	if _, err := readStream(t, c2, "hard", esdb.ReadStreamOptions{}, 10); errCode(err) != esdb.ErrorCodeStreamDeleted {
		t.Fatalf("tombstoned stream after reload: %v", err)
	}
	res := mustAppend(t, c2, "kept", esdb.Revision(2), event("K"))
	if res.NextExpectedVersion != 3 || res.CommitPosition <= head {
		t.Fatalf("append after reload: %+v, want revision 3 after position %d", res, head)
	}
}

func TestDataFile_NotOurs_ClearError(t *testing.T) {
	path := filepath.Join(t.TempDir(), "other.txt")
	if err := os.WriteFile(path, []byte("hello\nworld\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := esdbtest.Start(esdbtest.Options{DataFile: path})
	if err == nil || !strings.Contains(err.Error(), "not a stand-in data file") {
		t.Fatalf("err = %v, want a clear error", err)
	}
}

func TestDataFile_PersistentGroupsComeBackAfterTheirCheckpoint(t *testing.T) {
	path := filepath.Join(t.TempDir(), "standin.jsonl")
	srv := startWithFile(t, path)
	c := newClient(t, srv)
	createAll(t, c, "kept", func(s *esdb.PersistentSubscriptionSettings) {
		s.CheckpointLowerBound, s.CheckpointAfter, s.ConsumerStrategyName = 1, 1, esdb.ConsumerStrategyPinned
	})
	createAll(t, c, "gone", nil)
	if err := c.DeletePersistentSubscriptionToAll(ctxFor(t), "gone", esdb.DeletePersistentSubscriptionOptions{}); err != nil {
		t.Fatal(err)
	}
	sub := connectAll(t, c, "kept", 10)
	acked := mustAppend(t, c, "user-1", esdb.NoStream{}, events("A", 2)...).CommitPosition
	for i := 0; i < 2; i++ {
		if err := sub.Ack(next(t, sub).Event); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, "acks processed", func() bool { return srv.PersistentOutstanding("$all", "kept") == 0 })
	mustAppend(t, c, "user-1", esdb.Revision(1), event("B")) // delivered, not acked
	if got := name(next(t, sub)); got != "user-1/2#0" {
		t.Fatalf("got %s", got)
	}
	want := fmt.Sprintf(`"C:%d/P:%d"`, acked, acked)
	eventually(t, "checkpoint at the last acked event", func() bool {
		evs, err := readStream(t, c, "$persistentsubscription-$all::kept-checkpoint", esdb.ReadStreamOptions{Direction: esdb.Backwards, From: esdb.End{}}, 1)
		return err == nil && len(evs) == 1 && string(evs[0].Event.Data) == want
	})
	if err := srv.Close(); err != nil {
		t.Fatal(err)
	}

	again := startWithFile(t, path)
	defer again.Close()
	c2 := newClient(t, again)
	if err := c2.CreatePersistentSubscriptionToAll(ctxFor(t), "kept", esdb.PersistentAllSubscriptionOptions{}); errCode(err) != esdb.ErrorCodeResourceAlreadyExists {
		t.Fatalf("re-create after reload: %v, want already exists", err)
	}
	if _, err := c2.SubscribeToPersistentSubscriptionToAll(ctxFor(t), "gone", esdb.SubscribeToPersistentSubscriptionOptions{}); errCode(err) != esdb.ErrorCodeResourceNotFound {
		t.Fatalf("connect to the deleted group after reload: %v, want not found", err)
	}
	sub2 := connectAll(t, c2, "kept", 10)
	if got := name(next(t, sub2)); got != "user-1/2#0" {
		t.Fatalf("after reload the group delivered %s first, want user-1/2 (the first event after its checkpoint)", got)
	}
}
