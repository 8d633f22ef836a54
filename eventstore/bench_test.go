package eventstore

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/usersync/usersync/domain"
)

// benchEvent returns an event of about 300 bytes of JSON.
func benchEvent(i int) domain.NewEvent {
	data := fmt.Sprintf(`{"user_id":"u-%012d","email":"user%d@example.com","display_name":"User number %d","groups":["staff","engineering","on-call"],"source":"ldap","attributes":{"department":"platform","location":"remote","title":"engineer"},"pad":"%s"}`,
		i, i, i, strings.Repeat("x", 40))
	return domain.NewEvent{
		Type:     "UserUpdated",
		Data:     []byte(data),
		Metadata: []byte(`{"schema":1,"causation":"bench"}`),
	}
}

// BenchmarkAppend measures durable appends of one ~300-byte event, each
// writer to its own stream with an exact expected version.
func BenchmarkAppend(b *testing.B) { benchmarkAppend(b) }

// BenchmarkAppendSQLiteSync is BenchmarkAppend with WithSQLiteSync: SQLite
// fsyncs inside each commit instead of the pipelined syncer.
func BenchmarkAppendSQLiteSync(b *testing.B) { benchmarkAppend(b, WithSQLiteSync()) }

// BenchmarkAppendWebhooks measures the intake's pattern: 64 writers each
// appending one ~300-byte event at any version to one of 10,000 streams
// (a webhook to its contact's stream), so that every commit touches many
// streams' index entries.
func BenchmarkAppendWebhooks(b *testing.B) { benchmarkAppendTo(b, []int{64}, 10000) }

func benchmarkAppend(b *testing.B, opts ...Option) { benchmarkAppendTo(b, []int{1, 64}, 0, opts...) }

// benchmarkAppendTo runs each count of writers; with streams 0 each writer
// appends to its own stream at an exact version, else to a random one of
// streams at any version.
func benchmarkAppendTo(b *testing.B, writerCounts []int, streams int, opts ...Option) {
	for _, writers := range writerCounts {
		b.Run(fmt.Sprintf("writers=%d", writers), func(b *testing.B) {
			ctx := context.Background()
			s, err := Open(ctx, filepath.Join(b.TempDir(), "events.db"), opts...)
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			ev := benchEvent(1)
			var next atomic.Int64
			commits0, committed0, syncs0, syncNanos0 := s.commits.Load(), s.committed.Load(), s.syncs.Load(), s.syncNanos.Load()
			written0 := bytesWritten()
			b.SetBytes(int64(len(ev.Data) + len(ev.Metadata)))
			b.ResetTimer()
			start := time.Now()
			var wg sync.WaitGroup
			errs := make(chan error, writers)
			for w := range writers {
				wg.Go(func() {
					stream := fmt.Sprintf("user-%d", w)
					var version uint64
					for i := next.Add(1); i <= int64(b.N); i = next.Add(1) {
						expected := domain.ExactVersion(version)
						if streams > 0 {
							stream, expected = "contact-"+strconv.Itoa(int(i*7919%int64(streams))), domain.AnyVersion()
						}
						res, err := s.Append(ctx, stream, expected, ev)
						if err != nil {
							errs <- err
							return
						}
						version = res.Version
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
			if c := s.commits.Load() - commits0; c > 0 {
				b.ReportMetric(float64(s.committed.Load()-committed0)/float64(c), "appends/commit")
			}
			if w := bytesWritten(); w > 0 {
				b.ReportMetric(float64(w-written0)/float64(b.N)/1024, "written-KiB/append")
			}
			if n := s.syncs.Load() - syncs0; n > 0 {
				b.ReportMetric(float64(s.committed.Load()-committed0)/float64(n), "appends/fsync")
				b.ReportMetric(float64(s.syncNanos.Load()-syncNanos0)/float64(n)/1e3, "µs/fsync")
			}
		})
	}
}

// bytesWritten is how many bytes the process has written (wchar of
// /proc/self/io: the log, the checkpoints), 0 where that is unknown.
func bytesWritten() uint64 {
	b, err := os.ReadFile("/proc/self/io")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "wchar: "); ok {
			n, _ := strconv.ParseUint(v, 10, 64)
			return n
		}
	}
	return 0
}

// benchEvents is the size of the store BenchmarkReadAll replays,
// overridable with USERSYNC_BENCH_EVENTS (0 skips the benchmark).
func benchEvents(b *testing.B) int {
	n := 1_000_000
	if v := os.Getenv("USERSYNC_BENCH_EVENTS"); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil || n < 0 {
			b.Fatalf("USERSYNC_BENCH_EVENTS=%q: want a count of events", v)
		}
	}
	if n == 0 {
		b.Skip("USERSYNC_BENCH_EVENTS=0")
	}
	return n
}

// loadStore fills s with n events in appends of 5000 events, from four
// goroutines with 25 streams each, so that the load commits few
// transactions and keeps the writer busy.
func loadStore(tb testing.TB, s *SQLite, n int) {
	tb.Helper()
	ctx := context.Background()
	const perAppend = 5000
	const loaders = 4
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, loaders)
	for l := range loaders {
		wg.Go(func() {
			batch := make([]domain.NewEvent, 0, perAppend)
			for {
				i := int(next.Add(1)-1) * perAppend
				if i >= n {
					return
				}
				batch = batch[:0]
				for j := i; j < min(n, i+perAppend); j++ {
					batch = append(batch, benchEvent(j))
				}
				stream := fmt.Sprintf("user-%d", l*25+(i/perAppend)%25)
				if _, err := s.Append(ctx, stream, domain.AnyVersion(), batch...); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		tb.Fatal(err)
	}
}

// BenchmarkReadAll replays a store of USERSYNC_BENCH_EVENTS (default
// 1,000,000) events of about 300 bytes in pages of 4096, as a rebuild does.
func BenchmarkReadAll(b *testing.B) {
	n := benchEvents(b)
	ctx := context.Background()
	path := filepath.Join(b.TempDir(), "events.db")
	s, err := Open(ctx, path)
	if err != nil {
		b.Fatal(err)
	}
	start := time.Now()
	loadStore(b, s, n)
	b.Logf("loaded %d events in %v", n, time.Since(start))
	// Replay a store at rest, as a rebuild at startup does: reopening
	// leaves every page in the database file, none in the log.
	if err := s.Close(); err != nil {
		b.Fatal(err)
	}
	if s, err = Open(ctx, path); err != nil {
		b.Fatal(err)
	}
	defer s.Close()

	const page = 4096
	var read int
	start = time.Now()
	for b.Loop() {
		var after uint64
		for {
			evs, err := s.ReadAll(ctx, after, page)
			if err != nil {
				b.Fatal(err)
			}
			if len(evs) == 0 {
				break
			}
			read += len(evs)
			after = evs[len(evs)-1].Position
		}
	}
	elapsed := time.Since(start)
	if read%n != 0 {
		b.Fatalf("read %d events, not a multiple of %d", read, n)
	}
	b.ReportMetric(float64(read)/elapsed.Seconds(), "events/s")
}
