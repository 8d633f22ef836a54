package esdbtest_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/EventStore/EventStore-Client-Go/v4/esdb"
	"github.com/google/uuid"

	"github.com/usersync/usersync/eventstore/esdb/esdbtest"
)

// waitFor bounds every wait in these tests.
const waitFor = 10 * time.Second

// newClient connects the real client to the stand-in and closes it at the end of the test.
func newClient(t *testing.T, srv *esdbtest.Server) *esdb.Client {
	t.Helper()
	return newClientTo(t, srv.ConnString())
}

func newClientTo(t *testing.T, conn string) *esdb.Client {
	t.Helper()
	conf, err := esdb.ParseConnectionString(conn)
	if err != nil {
		t.Fatalf("parse %q: %v", conn, err)
	}
	conf.Logger = func(esdb.LogLevel, string, ...interface{}) {}
	c, err := esdb.NewClient(conf)
	if err != nil {
		t.Fatalf("new client: %v", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func ctxFor(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	t.Cleanup(cancel)
	return ctx
}

// event is a JSON event of the given type with a fresh id.
func event(typ string) esdb.EventData {
	return esdb.EventData{EventID: uuid.New(), EventType: typ, ContentType: esdb.ContentTypeJson, Data: []byte(`{"n":1}`)}
}

func events(typ string, n int) []esdb.EventData {
	out := make([]esdb.EventData, n)
	for i := range out {
		out[i] = event(typ)
	}
	return out
}

func mustAppend(t *testing.T, c *esdb.Client, stream string, exp esdb.ExpectedRevision, evs ...esdb.EventData) *esdb.WriteResult {
	t.Helper()
	res, err := c.AppendToStream(ctxFor(t), stream, esdb.AppendToStreamOptions{ExpectedRevision: exp}, evs...)
	if err != nil {
		t.Fatalf("append to %s: %v", stream, err)
	}
	return res
}

// errCode is the *esdb.Error code inside err, or -1.
func errCode(err error) esdb.ErrorCode {
	var e *esdb.Error
	if errors.As(err, &e) {
		return e.Code()
	}
	return -1
}

// readStream reads a whole stream read; the error is the read's (stream_not_found, deleted).
func readStream(t *testing.T, c *esdb.Client, stream string, opts esdb.ReadStreamOptions, count uint64) ([]*esdb.ResolvedEvent, error) {
	t.Helper()
	rs, err := c.ReadStream(ctxFor(t), stream, opts, count)
	if err != nil {
		return nil, err
	}
	defer rs.Close()
	return drain(rs)
}

func readAll(t *testing.T, c *esdb.Client, opts esdb.ReadAllOptions, count uint64) []*esdb.ResolvedEvent {
	t.Helper()
	rs, err := c.ReadAll(ctxFor(t), opts, count)
	if err != nil {
		t.Fatalf("read $all: %v", err)
	}
	defer rs.Close()
	out, err := drain(rs)
	if err != nil {
		t.Fatalf("read $all: %v", err)
	}
	return out
}

func drain(rs *esdb.ReadStream) ([]*esdb.ResolvedEvent, error) {
	var out []*esdb.ResolvedEvent
	for i := 0; i < 1_000_000; i++ {
		ev, err := rs.Recv()
		if err != nil {
			if err.Error() == "EOF" {
				return out, nil
			}
			return out, err
		}
		out = append(out, ev)
	}
	return out, fmt.Errorf("read did not end")
}

// recv is sub.Recv with a deadline: on timeout the subscription is closed and the test fails.
func recv(t *testing.T, sub *esdb.Subscription) *esdb.SubscriptionEvent {
	t.Helper()
	ch := make(chan *esdb.SubscriptionEvent, 1)
	go func() { ch <- sub.Recv() }()
	select {
	case ev := <-ch:
		return ev
	case <-time.After(waitFor):
		_ = sub.Close()
		t.Fatalf("no subscription event within %s", waitFor)
		return nil
	}
}

// recvPersistent is PersistentSubscription.Recv with a deadline.
func recvPersistent(t *testing.T, sub *esdb.PersistentSubscription) *esdb.PersistentSubscriptionEvent {
	t.Helper()
	ev, ok := tryRecvPersistent(sub, waitFor)
	if !ok {
		t.Fatalf("no persistent subscription event within %s", waitFor)
	}
	return ev
}

// tryRecvPersistent waits at most d; on timeout it closes the subscription.
func tryRecvPersistent(sub *esdb.PersistentSubscription, d time.Duration) (*esdb.PersistentSubscriptionEvent, bool) {
	ch := make(chan *esdb.PersistentSubscriptionEvent, 1)
	go func() { ch <- sub.Recv() }()
	select {
	case ev := <-ch:
		return ev, true
	case <-time.After(d):
		_ = sub.Close()
		return nil, false
	}
}

// eventually polls cond until it holds or the deadline passes; last, if given, says what was
// seen last.
func eventually(t *testing.T, what string, cond func() bool, last ...func() string) {
	t.Helper()
	deadline := time.Now().Add(waitFor)
	for !cond() {
		if time.Now().After(deadline) {
			seen := ""
			for _, l := range last {
				seen = " (last seen: " + l() + ")"
			}
			t.Fatalf("%s: not within %s%s", what, waitFor, seen)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
