package esdb_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/usersync/usersync/eventstore"
	"github.com/usersync/usersync/eventstore/esdb"
	"github.com/usersync/usersync/eventstore/esdb/esdbtest"
	"github.com/usersync/usersync/eventstore/eventstoretest"
)

// liveEnv names the environment variable that holds a real server's
// connection string for the live conformance run.
const liveEnv = "USERSYNC_TEST_ESDB"

// everyStream makes the store read back every (non-$) stream: the suite
// names its streams freely.
var everyStream = []string{""}

func openStore(t testing.TB, conn string, opts esdb.Options) *esdb.Store {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	s, err := esdb.Open(ctx, conn, opts)
	if err != nil {
		t.Fatalf("Open(%s): %v", esdb.Redact(conn), err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// TestConformance runs the store conformance suite over the adapter and the
// real client against the in-process stand-in, a fresh one per check.
func TestConformance(t *testing.T) {
	t.Parallel()
	eventstoretest.Run(t, eventstoretest.Features{}, func(t *testing.T) eventstore.Store {
		srv := esdbtest.New(t)
		return openStore(t, srv.ConnString(), esdb.Options{StreamPrefixes: everyStream})
	})
}

// TestRestart checks what survives a new client and a restart of the
// stand-in (same address, same data).
func TestRestart(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	servers := map[string]*esdbtest.Server{} // by subtest
	server := func(t *testing.T) *esdbtest.Server {
		mu.Lock()
		defer mu.Unlock()
		if servers[t.Name()] == nil {
			servers[t.Name()] = esdbtest.New(t)
		}
		return servers[t.Name()]
	}
	f := eventstoretest.Features{Restart: func(t *testing.T) {
		if err := server(t).Restart(); err != nil {
			t.Fatalf("restart the stand-in: %v", err)
		}
	}}
	eventstoretest.RunRestart(t, f, func(t *testing.T, dir string) eventstore.Store {
		return openStore(t, server(t).ConnString(), esdb.Options{StreamPrefixes: everyStream})
	})
}

// TestConformanceLive runs the suite against a real EventStoreDB / KurrentDB
// when USERSYNC_TEST_ESDB holds its connection string. Each check works in a
// namespace of its own, so the server need not be empty.
func TestConformanceLive(t *testing.T) {
	conn := os.Getenv(liveEnv)
	if conn == "" {
		t.Skip(liveEnv + " is not set: set it to a connection string (e.g. 'esdb://localhost:2113?tls=false') to run the conformance suite against a real server")
	}
	t.Parallel()
	eventstoretest.Run(t, eventstoretest.Features{}, func(t *testing.T) eventstore.Store {
		return openStore(t, conn, esdb.Options{StreamPrefixes: everyStream, Namespace: namespace()})
	})
	t.Run("Restart", func(t *testing.T) {
		var mu sync.Mutex
		spaces := map[string]string{} // by dir
		eventstoretest.RunRestart(t, eventstoretest.Features{}, func(t *testing.T, dir string) eventstore.Store {
			mu.Lock()
			if spaces[dir] == "" {
				spaces[dir] = namespace()
			}
			ns := spaces[dir]
			mu.Unlock()
			return openStore(t, conn, esdb.Options{StreamPrefixes: everyStream, Namespace: ns})
		})
	})
}

// namespace is a fresh stream-name prefix for one check on a shared server.
func namespace() string {
	b := make([]byte, 6)
	rand.Read(b)
	return "usersync-test-" + hex.EncodeToString(b) + "-"
}
