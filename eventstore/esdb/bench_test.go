package esdb_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/usersync/usersync/domain"
	"github.com/usersync/usersync/eventstore/esdb"
	"github.com/usersync/usersync/eventstore/esdb/esdbtest"
	"github.com/usersync/usersync/eventstore/eventstoretest"
)

// BenchmarkStandInAppend measures appends/s of one small event each, at an
// exact expected version, by 1 and 64 concurrent writers (one stream each),
// through the real client to the in-process stand-in over loopback gRPC.
// These are stand-in figures: they measure the adapter and the client, not
// an EventStoreDB server (no disk, no replication).
func BenchmarkStandInAppend(b *testing.B) {
	for _, writers := range []int{1, 64} {
		b.Run(fmt.Sprintf("writers=%d", writers), func(b *testing.B) {
			srv := esdbtest.New(b)
			s := openStore(b, srv.ConnString(), esdb.Options{})
			ctx := context.Background()
			var wg sync.WaitGroup
			errs := make(chan error, writers)
			b.ResetTimer()
			start := time.Now()
			for w := range writers {
				n := b.N / writers
				if w < b.N%writers {
					n++
				}
				wg.Go(func() {
					stream := fmt.Sprintf("contact-%d", w)
					for i := range n {
						if _, err := s.Append(ctx, stream, domain.ExactVersion(uint64(i)), eventstoretest.Event("E", i)); err != nil {
							errs <- err
							return
						}
					}
				})
			}
			wg.Wait()
			elapsed := time.Since(start)
			b.StopTimer()
			close(errs)
			for err := range errs {
				b.Fatal(err)
			}
			b.ReportMetric(float64(b.N)/elapsed.Seconds(), "appends/s")
		})
	}
}

// BenchmarkStandInSubscribe measures events/s a catch-up subscription
// delivers from the start of a log of b.N events (appended 100 at a time
// beforehand), through the real client from the in-process stand-in.
// Stand-in figures, not server figures.
func BenchmarkStandInSubscribe(b *testing.B) {
	srv := esdbtest.New(b)
	s := openStore(b, srv.ConnString(), esdb.Options{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for i := 0; i < b.N; i += 100 {
		if _, err := s.Append(ctx, fmt.Sprintf("contact-%d", i%97), domain.AnyVersion(), eventstoretest.Events("E", min(100, b.N-i))...); err != nil {
			b.Fatal(err)
		}
	}
	b.ResetTimer()
	start := time.Now()
	sub := s.Subscribe(ctx, 0)
	for range b.N {
		if _, ok := <-sub.Events(); !ok {
			b.Fatalf("subscription ended: %v", sub.Err())
		}
	}
	elapsed := time.Since(start)
	b.StopTimer()
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "events/s")
}
