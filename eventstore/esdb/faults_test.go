package esdb_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/usersync/usersync/domain"
	"github.com/usersync/usersync/eventstore"
	"github.com/usersync/usersync/eventstore/esdb"
	"github.com/usersync/usersync/eventstore/esdb/esdbtest"
	"github.com/usersync/usersync/eventstore/eventstoretest"
)

func testContext(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func mustAppend(t testing.TB, s *esdb.Store, stream string, ev domain.ExpectedVersion, events ...domain.NewEvent) domain.AppendResult {
	t.Helper()
	res, err := s.Append(testContext(t), stream, ev, events...)
	if err != nil {
		t.Fatalf("append to %s (%s): %v", stream, ev, err)
	}
	return res
}

// assertEachOnce checks that stream holds want events with distinct data,
// read through the store and counted by the stand-in.
func assertEachOnce(t *testing.T, srv *esdbtest.Server, s *esdb.Store, stream string, want int) {
	t.Helper()
	evs, err := s.ReadStream(testContext(t), stream)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, e := range evs {
		if seen[string(e.Data)] {
			t.Fatalf("%s holds %s twice", stream, e.Data)
		}
		seen[string(e.Data)] = true
	}
	if len(evs) != want || srv.StreamLen(stream) != want {
		t.Fatalf("%s holds %d events (stand-in: %d), want %d", stream, len(evs), srv.StreamLen(stream), want)
	}
}

func TestAppend_AnswerLost_ExactRetryIsRecognised(t *testing.T) {
	t.Parallel()
	// Given a stream with one event
	srv := esdbtest.New(t)
	s := openStore(t, srv.ConnString(), esdb.Options{})
	mustAppend(t, s, "contact-1", domain.NoStream(), eventstoretest.Event("E", 0))
	before := srv.Appends()
	// When the next append is committed but its answer is lost
	srv.LoseAppendAnswers(1)
	res := mustAppend(t, s, "contact-1", domain.ExactVersion(1), eventstoretest.Event("E", 1), eventstoretest.Event("E", 2))
	// Then the retry is answered with the first attempt's result and the
	// stream holds each event once
	if res.Version != 3 {
		t.Fatalf("append = %+v, want version 3", res)
	}
	if srv.Appends()-before < 2 {
		t.Fatalf("the append reached the server %d times, want a retry", srv.Appends()-before)
	}
	assertEachOnce(t, srv, s, "contact-1", 3)
	if srv.Head() != res.Position {
		t.Fatalf("position %d, stand-in head %d", res.Position, srv.Head())
	}
}

func TestAppend_AnswerLost_AnyRetryIsNotDuplicated(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		// prepare runs before the lossy append; other writes the store
		// does not know about make its last known revision stale.
		prepare func(t *testing.T, s, other *esdb.Store)
	}{
		{"NewStream", func(*testing.T, *esdb.Store, *esdb.Store) {}},
		{"KnownStream", func(t *testing.T, s, _ *esdb.Store) {
			mustAppend(t, s, "contact-1", domain.AnyVersion(), eventstoretest.Event("P", 100))
		}},
		{"StaleRevision", func(t *testing.T, s, other *esdb.Store) {
			mustAppend(t, s, "contact-1", domain.AnyVersion(), eventstoretest.Event("P", 100))
			mustAppend(t, other, "contact-1", domain.AnyVersion(), eventstoretest.Event("P", 101))
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			// Given a server that forgets the ids of Any appends (as after a
			// restart), so only exact revisions can recognise a retry
			srv := esdbtest.New(t)
			s := openStore(t, srv.ConnString(), esdb.Options{})
			other := openStore(t, srv.ConnString(), esdb.Options{})
			tc.prepare(t, s, other)
			n := srv.StreamLen("contact-1")
			srv.ForgetEventIDs()
			// When an AnyVersion append is committed and its answer lost
			srv.LoseAppendAnswers(1)
			res := mustAppend(t, s, "contact-1", domain.AnyVersion(), eventstoretest.Event("E", 1), eventstoretest.Event("E", 2))
			// Then the events are there once, at the end
			if res.Version != uint64(n+2) {
				t.Fatalf("append = %+v, want version %d", res, n+2)
			}
			assertEachOnce(t, srv, s, "contact-1", n+2)
		})
	}
}

func TestAppend_NotLeader_RetriedOnTheLeader(t *testing.T) {
	t.Parallel()
	srv := esdbtest.New(t)
	s := openStore(t, srv.ConnString(), esdb.Options{})
	srv.NotLeader(2)
	res := mustAppend(t, s, "contact-1", domain.NoStream(), eventstoretest.Event("E", 1))
	if res.Version != 1 {
		t.Fatalf("append = %+v", res)
	}
	srv.NotLeader(1)
	evs, err := s.ReadStream(testContext(t), "contact-1")
	if err != nil || len(evs) != 1 {
		t.Fatalf("ReadStream after not-leader = %d events, %v", len(evs), err)
	}
	assertEachOnce(t, srv, s, "contact-1", 1)
}

func TestAppend_Unavailable_FailsWithErrUnavailableThenRecovers(t *testing.T) {
	t.Parallel()
	srv := esdbtest.New(t)
	s := openStore(t, srv.ConnString(), esdb.Options{RetryTimeout: 300 * time.Millisecond})
	srv.SetUnavailable(true)
	_, err := s.Append(testContext(t), "contact-1", domain.NoStream(), eventstoretest.Event("E", 1))
	if !errors.Is(err, esdb.ErrUnavailable) || errors.Is(err, domain.ErrConcurrency) {
		t.Fatalf("append while unavailable: %v, want ErrUnavailable", err)
	}
	if !strings.Contains(err.Error(), srv.Addr()) {
		t.Errorf("the error does not name %s: %v", srv.Addr(), err)
	}
	srv.SetUnavailable(false)
	mustAppend(t, s, "contact-1", domain.NoStream(), eventstoretest.Event("E", 1))
	assertEachOnce(t, srv, s, "contact-1", 1)
}

func TestAppend_TooLarge_RefusedBeforeSending(t *testing.T) {
	t.Parallel()
	srv := esdbtest.New(t)
	s := openStore(t, srv.ConnString(), esdb.Options{})
	before := srv.Appends()
	big := domain.NewEvent{Type: "E", Data: make([]byte, esdb.DefaultMaxAppendSize)}
	_, err := s.Append(testContext(t), "contact-1", domain.AnyVersion(), big)
	if !errors.Is(err, esdb.ErrTooLarge) || !errors.Is(err, eventstore.ErrInvalid) {
		t.Fatalf("append of %d bytes: %v, want ErrTooLarge", len(big.Data), err)
	}
	if srv.Appends() != before {
		t.Fatal("the too-large append was sent")
	}
	// Just under the limit goes through (the stand-in has the real limit).
	ok := domain.NewEvent{Type: "E", Data: make([]byte, esdb.DefaultMaxAppendSize-2)}
	mustAppend(t, s, "contact-1", domain.AnyVersion(), ok)
}

// subscribeThrough subscribes from 0, appends 3×n events and calls fault
// after each third: the subscriber must get every event once, in order.
func subscribeThrough(t *testing.T, srv *esdbtest.Server, s *esdb.Store, n int, fault func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(testContext(t))
	defer cancel()
	sub := s.Subscribe(ctx, 0)
	var got []domain.RecordedEvent
	for round := range 3 {
		for i := range n {
			mustAppend(t, s, fmt.Sprintf("contact-%d", i%5), domain.AnyVersion(), eventstoretest.Event("E", round*n+i))
		}
		got = append(got, receive(t, sub, n)...)
		fault()
	}
	want, err := s.ReadAll(testContext(t), 0, 10*n)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) {
		t.Fatalf("got %d events, the log has %d", len(got), len(want))
	}
	for i := range want {
		if got[i].Position != want[i].Position || string(got[i].Data) != string(want[i].Data) {
			t.Fatalf("event %d: got pos %d %s, want pos %d %s", i, got[i].Position, got[i].Data, want[i].Position, want[i].Data)
		}
	}
	// Still live after the last fault.
	mustAppend(t, s, "contact-late", domain.AnyVersion(), eventstoretest.Event("L", 0))
	if late := receive(t, sub, 1); late[0].Stream != "contact-late" {
		t.Fatalf("after the faults got %s, want the late event", late[0].Stream)
	}
}

func receive(t *testing.T, sub *eventstore.Subscription, n int) []domain.RecordedEvent {
	t.Helper()
	guard := time.After(20 * time.Second)
	var out []domain.RecordedEvent
	for len(out) < n {
		select {
		case e, ok := <-sub.Events():
			if !ok {
				t.Fatalf("subscription ended after %d of %d: %v", len(out), n, sub.Err())
			}
			out = append(out, e)
		case <-guard:
			t.Fatalf("timed out after %d of %d events", len(out), n)
		}
	}
	return out
}

func TestSubscribe_SurvivesDroppedSubscriptions(t *testing.T) {
	t.Parallel()
	srv := esdbtest.New(t)
	s := openStore(t, srv.ConnString(), esdb.Options{})
	subscribeThrough(t, srv, s, 40, srv.DropSubscriptions)
}

func TestSubscribe_SurvivesClosedConnections(t *testing.T) {
	t.Parallel()
	srv := esdbtest.New(t)
	s := openStore(t, srv.ConnString(), esdb.Options{})
	subscribeThrough(t, srv, s, 40, srv.CloseConnections)
}

func TestSubscribe_SurvivesAServerRestart(t *testing.T) {
	t.Parallel()
	// A stopped server makes the client's discovery fail: the client closes
	// itself for good and the store must build a new one.
	srv := esdbtest.New(t)
	var logs lockedBuffer
	s := openStore(t, srv.ConnString(), esdb.Options{ConnectTimeout: 2 * time.Second, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	subscribeThrough(t, srv, s, 20, func() {
		if err := srv.Stop(); err != nil {
			t.Fatal(err)
		}
		// Calls while the server is gone fail: the first makes the client
		// rediscover, the discovery gives up and closes the client for
		// good, and the store replaces it.
		for i := 0; !strings.Contains(logs.String(), "using a new one"); i++ {
			if i == 5 {
				t.Fatalf("the store never replaced its client; log:\n%s", logs.String())
			}
			if err := s.Ping(testContext(t)); !errors.Is(err, esdb.ErrUnavailable) {
				t.Fatalf("Ping while the server is stopped: %v, want ErrUnavailable", err)
			}
		}
		if err := srv.Restart(); err != nil {
			t.Fatal(err)
		}
		// ...and once it is back, a new client gets through.
		if err := s.Ping(testContext(t)); err != nil {
			t.Fatalf("Ping after the restart: %v", err)
		}
	})
}

// lockedBuffer is a bytes.Buffer safe for concurrent writers.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func shortContext(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func TestChanged_ClosedByNewEventsAndAfterResubscribing(t *testing.T) {
	t.Parallel()
	srv := esdbtest.New(t)
	s := openStore(t, srv.ConnString(), esdb.Options{})
	waitClosed := func(ch <-chan struct{}, what string) {
		t.Helper()
		select {
		case <-ch:
		case <-time.After(20 * time.Second):
			t.Fatalf("Changed not closed %s", what)
		}
	}
	// The channel may close once spuriously while the feeder subscribes:
	// take channels until one stays open before the append.
	for i := range 3 {
		ch := s.Changed()
		mustAppend(t, s, "contact-1", domain.AnyVersion(), eventstoretest.Event("E", i))
		waitClosed(ch, fmt.Sprintf("after append %d", i))
	}
	srv.DropSubscriptions()
	ch := s.Changed()
	mustAppend(t, s, "contact-1", domain.AnyVersion(), eventstoretest.Event("E", 9))
	waitClosed(ch, "after the subscriptions were dropped")
	// Foreign streams do not count... but are not required not to: only
	// check that Close closes it.
	ch = s.Changed()
	s.Close()
	waitClosed(ch, "at Close")
	waitClosed(s.Changed(), "after Close")
}

func TestOpen_Unreachable_FailsNamingTheAddress(t *testing.T) {
	t.Parallel()
	_, err := esdb.Open(testContext(t), "esdb://admin:s3cret@127.0.0.1:1?tls=false", esdb.Options{})
	if err == nil {
		t.Fatal("Open of a closed port succeeded")
	}
	if !strings.Contains(err.Error(), "127.0.0.1:1") || !errors.Is(err, esdb.ErrUnavailable) {
		t.Fatalf("error does not name 127.0.0.1:1 (or is not ErrUnavailable): %v", err)
	}
	if strings.Contains(err.Error(), "s3cret") {
		t.Fatalf("error shows the password: %v", err)
	}
}

func TestOpen_SilentServer_FailsWithinConnectTimeout(t *testing.T) {
	t.Parallel()
	// Given a listener that accepts and never answers
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
	})
	// When Open is given a short connect timeout (the test's own deadline
	// is the only timing bound)
	_, err = esdb.Open(testContext(t), "esdb://"+ln.Addr().String()+"?tls=false", esdb.Options{ConnectTimeout: 2 * time.Second})
	// Then it fails, naming the address
	if err == nil {
		t.Fatal("Open of a silent server succeeded")
	}
	if !strings.Contains(err.Error(), ln.Addr().String()) || !errors.Is(err, esdb.ErrUnavailable) {
		t.Fatalf("error does not name %s: %v", ln.Addr(), err)
	}
}

func TestOpen_BadConnectionString_NoCredentialsInTheError(t *testing.T) {
	t.Parallel()
	for _, conn := range []string{
		"esdb://admin:s3cret@host:notaport",
		"http://admin:s3cret@host:2113",
		"esdb://admin:s3cret@h1:2113,h2:x",
	} {
		_, err := esdb.Open(testContext(t), conn, esdb.Options{})
		if err == nil {
			t.Fatalf("Open(%s) succeeded", esdb.Redact(conn))
		}
		if strings.Contains(err.Error(), "s3cret") {
			t.Fatalf("error shows the password: %v", err)
		}
	}
}

func TestStore_StringKindPing(t *testing.T) {
	t.Parallel()
	srv := esdbtest.New(t)
	s := openStore(t, srv.ConnString(), esdb.Options{})
	if s.Kind() != "esdb" || s.String() != "esdb("+srv.Addr()+")" {
		t.Fatalf("Kind %q, String %q", s.Kind(), s.String())
	}
	if err := s.Ping(testContext(t)); err != nil {
		t.Fatalf("Ping: %v", err)
	}
	s.Close()
	if err := s.Ping(testContext(t)); !errors.Is(err, eventstore.ErrClosed) {
		t.Fatalf("Ping after Close: %v, want ErrClosed", err)
	}
}

func TestReadAll_LeavesOutForeignStreams(t *testing.T) {
	t.Parallel()
	// Given a server shared with another application
	srv := esdbtest.New(t)
	foreign := openStore(t, srv.ConnString(), esdb.Options{StreamPrefixes: everyStream})
	s := openStore(t, srv.ConnString(), esdb.Options{})
	mustAppend(t, foreign, "orders-1", domain.AnyVersion(), eventstoretest.Events("O", 30)...)
	a := mustAppend(t, s, "contact-1", domain.AnyVersion(), eventstoretest.Event("E", 1))
	mustAppend(t, foreign, "orders-2", domain.AnyVersion(), eventstoretest.Events("O", 30)...)
	b := mustAppend(t, s, "email-x@y.z", domain.AnyVersion(), eventstoretest.Event("E", 2))
	mustAppend(t, foreign, "orders-3", domain.AnyVersion(), eventstoretest.Events("O", 30)...)
	// Then usersync's reads see only its own streams
	ctx := testContext(t)
	all, err := s.ReadAll(ctx, 0, 10)
	if err != nil || len(all) != 2 || all[0].Position != a.Position || all[1].Position != b.Position {
		t.Fatalf("ReadAll = %v, %v; want the two usersync events", all, err)
	}
	if rest, err := s.ReadAll(ctx, a.Position, 1); err != nil || len(rest) != 1 || rest[0].Position != b.Position {
		t.Fatalf("ReadAll after the first = %v, %v", rest, err)
	}
	if h, err := s.Head(ctx); err != nil || h != b.Position {
		t.Fatalf("Head = %d, %v; want %d", h, err, b.Position)
	}
	sub := s.Subscribe(ctx, 0)
	got := receive(t, sub, 2)
	if got[0].Position != a.Position || got[1].Position != b.Position {
		t.Fatalf("Subscribe delivered %v", got)
	}
}

func TestNamespace_KeepsInstallationsApart(t *testing.T) {
	t.Parallel()
	srv := esdbtest.New(t)
	one := openStore(t, srv.ConnString(), esdb.Options{Namespace: "one-"})
	two := openStore(t, srv.ConnString(), esdb.Options{Namespace: "two-"})
	mustAppend(t, one, "contact-1", domain.NoStream(), eventstoretest.Event("E", 1))
	mustAppend(t, two, "contact-1", domain.NoStream(), eventstoretest.Event("E", 2))
	if srv.StreamLen("one-contact-1") != 1 || srv.StreamLen("two-contact-1") != 1 {
		t.Fatal("the namespaces are not the server's stream names")
	}
	evs, err := one.ReadAll(testContext(t), 0, 10)
	if err != nil || len(evs) != 1 || evs[0].Stream != "contact-1" || string(evs[0].Data) != `{"n":1}` {
		t.Fatalf("ReadAll of namespace one = %v, %v", evs, err)
	}
}

// TestFollow_ReadAllAndChangedSurviveDrops drives eventstore.Follow, which
// is how the pipeline reads (ReadAll after a position, then wait on
// Changed), through dropped subscriptions and closed connections.
func TestFollow_ReadAllAndChangedSurviveDrops(t *testing.T) {
	t.Parallel()
	srv := esdbtest.New(t)
	s := openStore(t, srv.ConnString(), esdb.Options{})
	ctx, cancel := context.WithCancel(testContext(t))
	defer cancel()
	sub := eventstore.Follow(ctx, s, 0)
	faults := []func(){srv.DropSubscriptions, srv.CloseConnections, func() {}}
	var got []domain.RecordedEvent
	for round, fault := range faults {
		for i := range 30 {
			mustAppend(t, s, fmt.Sprintf("webhook-%d", i%3), domain.AnyVersion(), eventstoretest.Event("E", round*30+i))
		}
		got = append(got, receive(t, sub, 30)...)
		fault()
	}
	for i := range got {
		if string(got[i].Data) != string(eventstoretest.Event("E", i).Data) {
			t.Fatalf("event %d is %s", i, got[i].Data)
		}
	}
}

func TestAppend_SlowServer_TimesOutThenRetryLandsOnce(t *testing.T) {
	t.Parallel()
	// Given a server slower than the store's retry bound
	srv := esdbtest.New(t)
	s := openStore(t, srv.ConnString(), esdb.Options{RetryTimeout: 200 * time.Millisecond})
	srv.SetLatency(time.Second)
	// When an append gives up
	_, err := s.Append(testContext(t), "contact-1", domain.NoStream(), eventstoretest.Event("E", 1))
	if !errors.Is(err, esdb.ErrUnavailable) {
		t.Fatalf("append to a slow server: %v, want ErrUnavailable", err)
	}
	// Then the caller's retry at the same expected version lands once,
	// whether or not the first attempt did
	srv.SetLatency(0)
	res := mustAppend(t, s, "contact-1", domain.NoStream(), eventstoretest.Event("E", 1))
	if res.Version != 1 {
		t.Fatalf("retry = %+v, want version 1", res)
	}
	assertEachOnce(t, srv, s, "contact-1", 1)
}

func TestReadAll_AfterOneBeforeAnEvent_ReturnsThatEvent(t *testing.T) {
	t.Parallel()
	// Given events at gapped positions; the real server refuses to read
	// $all from a position inside a record, such as one before an event's
	srv := esdbtest.New(t)
	s := openStore(t, srv.ConnString(), esdb.Options{})
	first := mustAppend(t, s, "contact-at-1", domain.NoStream(), domain.NewEvent{Type: "A", Data: []byte(`{"n":1}`)})
	second := mustAppend(t, s, "contact-at-2", domain.NoStream(), domain.NewEvent{Type: "B", Data: []byte(`{"n":2}`)})
	for _, want := range []domain.AppendResult{first, second} {
		// When ReadAll(p-1, 1) asks for the event at p (the pipeline's
		// replay and lag, migrate's resume)
		recs, err := s.ReadAll(testContext(t), want.Position-1, 1)
		// Then it is that event
		if err != nil {
			t.Fatalf("ReadAll(%d, 1): %v", want.Position-1, err)
		}
		if len(recs) != 1 || recs[0].Position != want.Position {
			t.Fatalf("ReadAll(%d, 1) = %v, want the event at %d", want.Position-1, recs, want.Position)
		}
	}
	// And a position inside a record that is not one before an event is
	// an error, not a silent skip
	if _, err := s.ReadAll(testContext(t), first.Position+1, 1); err == nil {
		t.Fatalf("ReadAll(%d, 1) inside a record: no error", first.Position+1)
	}
}

func TestOpen_PasswordWithASlash_ErrorHoldsNoPartOfIt(t *testing.T) {
	t.Parallel()
	// Given passwords the client's URL parser cuts short (a base64 one
	// holds '/'), so that a piece of them lands in its error
	for _, conn := range []string{
		"esdb://admin:Zm9v/YmFy@127.0.0.1:1?tls=false",
		"esdb://admin:1234/rest@127.0.0.1:1?tls=false",
		"esdb://admin:p@ss/w?rd@127.0.0.1:1?tls=false",
	} {
		// When the store is opened
		_, err := esdb.Open(testContext(t), conn, esdb.Options{ConnectTimeout: time.Second})
		// Then it fails without any piece of the password
		if err == nil {
			t.Fatalf("%s: opened", conn)
		}
		for _, piece := range []string{"Zm9v", "YmFy", "1234", "rest", "ss/w", "w?rd"} {
			if strings.Contains(conn, piece) && strings.Contains(err.Error(), piece) {
				t.Errorf("the error of %s holds %q: %v", conn, piece, err)
			}
		}
	}
}

func TestOpen_AccessDenied_SaysWhatTheUserNeeds(t *testing.T) {
	t.Parallel()
	// Given a server that refuses the user (reading $all needs $admins)
	srv := esdbtest.New(t)
	srv.SetAccessDenied(true)
	// When the store is opened
	_, err := esdb.Open(testContext(t), srv.ConnString(), esdb.Options{ConnectTimeout: 2 * time.Second})
	// Then the error says it is a permission, what usersync needs and how
	// to give it, not only that the store is unavailable
	if err == nil {
		t.Fatal("opened")
	}
	for _, want := range []string{"$all", "$admins", "tls=true"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("the error does not say %q: %v", want, err)
		}
	}
}

// TestReadAllAndHead_PageThroughManyForeignEvents: more foreign events than
// one $all page between, before and after usersync's neither end a read
// early nor hide the head.
func TestReadAllAndHead_PageThroughManyForeignEvents(t *testing.T) {
	t.Parallel()
	srv := esdbtest.New(t)
	foreign := openStore(t, srv.ConnString(), esdb.Options{StreamPrefixes: everyStream})
	s := openStore(t, srv.ConnString(), esdb.Options{})
	many := func(stream string) {
		for i := range 3 {
			mustAppend(t, foreign, fmt.Sprintf("%s-%d", stream, i), domain.AnyVersion(), eventstoretest.Events("O", 400)...)
		}
	}
	many("before")
	a := mustAppend(t, s, "contact-1", domain.AnyVersion(), eventstoretest.Event("E", 1))
	many("between")
	b := mustAppend(t, s, "contact-2", domain.AnyVersion(), eventstoretest.Event("E", 2))
	many("after")
	ctx := testContext(t)
	for _, tc := range []struct {
		after uint64
		limit int
		want  []uint64
	}{
		{0, 10, []uint64{a.Position, b.Position}},
		{0, 1, []uint64{a.Position}},
		{a.Position, 1, []uint64{b.Position}},
		{a.Position - 1, 1, []uint64{a.Position}},
		{b.Position, 10, nil},
	} {
		got, err := s.ReadAll(ctx, tc.after, tc.limit)
		if err != nil {
			t.Fatalf("ReadAll(%d, %d): %v", tc.after, tc.limit, err)
		}
		var pos []uint64
		for _, e := range got {
			pos = append(pos, e.Position)
		}
		if fmt.Sprint(pos) != fmt.Sprint(tc.want) {
			t.Fatalf("ReadAll(%d, %d) = %v, want %v", tc.after, tc.limit, pos, tc.want)
		}
	}
	if h, err := s.Head(ctx); err != nil || h != b.Position {
		t.Fatalf("Head = %d, %v; want %d", h, err, b.Position)
	}
}
