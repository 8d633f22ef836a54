package esdbtest_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/EventStore/EventStore-Client-Go/v4/esdb"

	"github.com/usersync/usersync/eventstore/esdb/esdbtest"
)

func TestKeepalivePolicy_AllowsTheClientsPings(t *testing.T) {
	p := esdbtest.KeepalivePolicy()
	// the client pings every 10 s, also without streams
	if p.MinTime > 10*time.Second || !p.PermitWithoutStream {
		t.Fatalf("policy %+v would answer the client's 10 s pings with GOAWAY too_many_pings", p)
	}
}

func TestConnect_ClusterStringThroughGossip(t *testing.T) {
	srv := esdbtest.New(t)
	c := newClientTo(t, "esdb://"+srv.Addr()+","+srv.Addr()+"?tls=false&nodepreference=leader")
	mustAppend(t, c, "g", esdb.NoStream{}, event("G"))
	if srv.StreamLen("g") != 1 {
		t.Fatalf("append through a cluster string did not arrive")
	}
}

func TestStart_RefusesNonLoopbackAddress(t *testing.T) {
	tests := []struct {
		addr    string
		remote  bool
		wantErr bool
	}{
		{"127.0.0.1:0", false, false},
		{"[::1]:0", false, false},
		{"localhost:0", false, false},
		{"0.0.0.0:0", false, true},
		{"192.0.2.1:2113", false, true},
		{"0.0.0.0:0", true, false},
		{"nonsense", false, true},
	}
	for _, tt := range tests {
		t.Run(tt.addr, func(t *testing.T) {
			srv, err := esdbtest.Start(esdbtest.Options{Addr: tt.addr, AllowRemote: tt.remote})
			if srv != nil {
				defer srv.Close()
			}
			if (err != nil) != tt.wantErr {
				t.Fatalf("Start(%s, remote=%v) err = %v, want error %v", tt.addr, tt.remote, err, tt.wantErr)
			}
		})
	}
}

func TestNotLeader_ClientMovesAndNextCallSucceeds(t *testing.T) {
	srv := esdbtest.New(t)
	c := newClient(t, srv)
	mustAppend(t, c, "nl", esdb.NoStream{}, event("A"))
	tests := []struct {
		name string
		call func() error
	}{
		{"append", func() error {
			_, err := c.AppendToStream(ctxFor(t), "nl", esdb.AppendToStreamOptions{}, event("B"))
			return err
		}},
		{"read", func() error {
			_, err := readStream(t, c, "nl", esdb.ReadStreamOptions{}, 10)
			return err
		}},
		{"subscribe", func() error {
			sub, err := c.SubscribeToAll(ctxFor(t), esdb.SubscribeToAllOptions{})
			if err == nil {
				_ = sub.Close()
			}
			return err
		}},
		{"create persistent subscription", func() error {
			err := c.CreatePersistentSubscriptionToAll(ctxFor(t), "nl", esdb.PersistentAllSubscriptionOptions{})
			if errCode(err) == esdb.ErrorCodeResourceAlreadyExists {
				return nil
			}
			return err
		}},
		{"connect to persistent subscription", func() error {
			sub, err := c.SubscribeToPersistentSubscriptionToAll(ctxFor(t), "nl", esdb.SubscribeToPersistentSubscriptionOptions{})
			if err == nil {
				_ = sub.Close()
			}
			return err
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv.NotLeader(1)
			if err := tt.call(); errCode(err) != esdb.ErrorCodeNotLeader {
				t.Fatalf("first call: %v (code %d), want not leader", err, errCode(err))
			}
			if err := tt.call(); err != nil {
				t.Fatalf("second call: %v", err)
			}
		})
	}
}

func TestSetUnavailable_ThenBack(t *testing.T) {
	srv := esdbtest.New(t)
	c := newClient(t, srv)
	mustAppend(t, c, "u", esdb.NoStream{}, event("A"))
	srv.SetUnavailable(true)
	_, err := c.AppendToStream(ctxFor(t), "u", esdb.AppendToStreamOptions{}, event("B"))
	if errCode(err) != esdb.ErrorUnavailable {
		t.Fatalf("append while unavailable: %v (code %d), want unavailable", err, errCode(err))
	}
	srv.SetUnavailable(false)
	eventually(t, "append after the server is back", func() bool {
		_, err := c.AppendToStream(ctxFor(t), "u", esdb.AppendToStreamOptions{ExpectedRevision: esdb.Revision(0)}, event("C"))
		return err == nil
	})
	if srv.StreamLen("u") != 2 {
		t.Fatalf("stream has %d events, want 2", srv.StreamLen("u"))
	}
}

func TestLoseAppendAnswers_CommittedThenRetryIsRecognised(t *testing.T) {
	srv := esdbtest.New(t)
	c := newClient(t, srv)
	mustAppend(t, c, "lost", esdb.NoStream{}, event("A"))
	batch := events("B", 2)
	srv.LoseAppendAnswers(1)
	_, err := c.AppendToStream(ctxFor(t), "lost", esdb.AppendToStreamOptions{ExpectedRevision: esdb.Revision(0)}, batch...)
	if errCode(err) != esdb.ErrorUnavailable {
		t.Fatalf("append with a lost answer: %v, want unavailable", err)
	}
	if srv.StreamLen("lost") != 3 {
		t.Fatalf("the append was not committed: %d events", srv.StreamLen("lost"))
	}
	var res *esdb.WriteResult
	eventually(t, "retry", func() bool {
		res, err = c.AppendToStream(ctxFor(t), "lost", esdb.AppendToStreamOptions{ExpectedRevision: esdb.Revision(0)}, batch...)
		return errCode(err) != esdb.ErrorUnavailable
	})
	if err != nil || res.NextExpectedVersion != 2 || srv.StreamLen("lost") != 3 {
		t.Fatalf("retry: %v %+v, %d events; want the original answer and no duplicate", err, res, srv.StreamLen("lost"))
	}
}

func TestSetLatency_DelaysAnswers(t *testing.T) {
	srv := esdbtest.New(t)
	c := newClient(t, srv)
	mustAppend(t, c, "slow", esdb.NoStream{}, event("A")) // connected
	srv.SetLatency(time.Hour)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, err := c.AppendToStream(ctx, "slow", esdb.AppendToStreamOptions{}, event("B"))
	if errCode(err) != esdb.ErrorCodeDeadlineExceeded {
		t.Fatalf("append under an hour's latency with a short deadline: %v (code %d), want deadline exceeded", err, errCode(err))
	}
	srv.SetLatency(0)
	eventually(t, "append without latency", func() bool {
		_, err := c.AppendToStream(ctxFor(t), "slow", esdb.AppendToStreamOptions{}, event("C"))
		return err == nil
	})
}

func TestCloseConnections_DropsSubscriptionClientReconnects(t *testing.T) {
	srv := esdbtest.New(t)
	c := newClient(t, srv)
	sub, err := c.SubscribeToAll(ctxFor(t), esdb.SubscribeToAllOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	collect(t, sub, caughtUp)
	srv.CloseConnections()
	ev := recv(t, sub)
	if ev.SubscriptionDropped == nil {
		t.Fatalf("got %+v, want SubscriptionDropped", ev)
	}
	eventually(t, "append after the connection closed", func() bool {
		_, err := c.AppendToStream(ctxFor(t), "cc", esdb.AppendToStreamOptions{}, event("A"))
		return err == nil
	})
}

func TestStopRestart_KeepsDataAndAddress(t *testing.T) {
	srv := esdbtest.New(t)
	c := newClient(t, srv)
	first := mustAppend(t, c, "sr", esdb.NoStream{}, event("A"))
	addr := srv.Addr()
	if err := srv.Stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.AppendToStream(ctxFor(t), "sr", esdb.AppendToStreamOptions{}, event("B")); err == nil {
		t.Fatalf("append to a stopped stand-in succeeded")
	}
	if err := srv.Restart(); err != nil {
		t.Fatal(err)
	}
	if srv.Addr() != addr {
		t.Fatalf("restarted on %s, want %s", srv.Addr(), addr)
	}
	c2 := newClient(t, srv) // the old client may have given up for good
	got, err := readStream(t, c2, "sr", esdb.ReadStreamOptions{}, 10)
	if err != nil || len(got) != 1 || got[0].Event.Position.Commit != first.CommitPosition {
		t.Fatalf("after restart: %v, %d events; want the event at %d", err, len(got), first.CommitPosition)
	}
	res := mustAppend(t, c2, "sr", esdb.Revision(0), event("C"))
	if res.CommitPosition <= first.CommitPosition {
		t.Fatalf("position went back after restart: %d <= %d", res.CommitPosition, first.CommitPosition)
	}
}

func TestUnreachableAfterClose(t *testing.T) {
	srv, err := esdbtest.Start(esdbtest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	conn := srv.ConnString()
	if !strings.HasPrefix(conn, "esdb://127.0.0.1:") || !strings.HasSuffix(conn, "?tls=false") {
		t.Fatalf("conn string %q", conn)
	}
	if err := srv.Close(); err != nil {
		t.Fatal(err)
	}
	if err := srv.Close(); err != nil {
		t.Fatalf("second close: %v", err)
	}
	if err := srv.Restart(); err == nil {
		t.Fatalf("restart after close succeeded")
	}
}
