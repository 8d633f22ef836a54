package enginebench

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"

	"github.com/usersync/usersync/domain"
	"github.com/usersync/usersync/eventstore"
)

// appender is the part of an event store the benchmark drives.
type appender interface {
	Append(ctx context.Context, stream string, expected domain.ExpectedVersion, events ...domain.NewEvent) (domain.AppendResult, error)
	Close() error
}

// webhookEvent is about the size of a recorded WebhookReceived.
func webhookEvent() domain.NewEvent {
	data := `{"webhook_id":"01a2317f-c10c-7ce4-b740-d0c80b9864a1","action":"update_tags","contact_id":"4711","params":{"async":"true","email":"ann@example.com","first_name":"Ann","last_name":"Lee","tags":"1,2"},"method":"GET","source":"127.0.0.1","received_at":"2026-12-01T12:00:00.000000001Z"}`
	return domain.NewEvent{Type: "WebhookReceived", Data: []byte(data), Metadata: []byte(`{"occurred_at":"2026-12-01T12:00:00.000000001Z","webhook_id":"01a2317f-c10c-7ce4-b740-d0c80b9864a1"}`)}
}

// BenchmarkIntake appends one webhook event per call, at any version, to
// one of 10,000 streams (a contact's), from 64 writers at once: the
// intake's pattern. Every engine acknowledges an append only once it is
// fsynced, commits concurrent appends together and checks the stream's
// version in the commit's order.
func BenchmarkIntake(b *testing.B) {
	engines := []struct {
		name string
		// open returns the store and how many commits it made: fsyncs
		// for SQLite (its group commits), batches for Pebble (which
		// shares one WAL fsync between the batches waiting for it).
		open func(b *testing.B, dir string) (appender, func() uint64)
	}{
		{"sqlite", func(b *testing.B, dir string) (appender, func() uint64) {
			var commits atomic.Uint64
			s, err := eventstore.Open(context.Background(), filepath.Join(dir, "events.db"),
				eventstore.WithCommitObserver(func(int, time.Duration) { commits.Add(1) }))
			if err != nil {
				b.Fatal(err)
			}
			return s, commits.Load
		}},
		{"pebble", func(b *testing.B, dir string) (appender, func() uint64) {
			s, err := openPebble(filepath.Join(dir, "events.pebble"))
			if err != nil {
				b.Fatal(err)
			}
			return s, s.commits.Load
		}},
	}
	for _, streams := range []int{64, 10000} {
		for _, e := range engines {
			b.Run(fmt.Sprintf("engine=%s/streams=%d", e.name, streams), func(b *testing.B) {
				s, counters := e.open(b, b.TempDir())
				defer s.Close()
				runWriters(b, s, 64, streams)
				if c := counters(); c > 0 {
					b.ReportMetric(float64(b.N)/float64(c), "appends/commit")
				}
			})
		}
	}
}

func runWriters(b *testing.B, s appender, writers, streams int) {
	ctx := context.Background()
	ev := webhookEvent()
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	b.SetBytes(int64(len(ev.Data) + len(ev.Metadata)))
	b.ResetTimer()
	start, written := time.Now(), bytesWritten()
	for range writers {
		wg.Go(func() {
			for i := next.Add(1); i <= int64(b.N); i = next.Add(1) {
				stream := "contact-" + strconv.Itoa(int(i*7919%int64(streams)))
				if _, err := s.Append(ctx, stream, domain.AnyVersion(), ev); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "appends/s")
	if w := bytesWritten(); w > 0 {
		b.ReportMetric(float64(w-written)/float64(b.N)/1024, "written-KiB/append")
	}
	b.StopTimer()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
}

// bytesWritten is how many bytes the process has written so far (wchar
// of /proc/self/io: logs, checkpoints, flushes, compactions), 0 where that
// is unknown.
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

// pebbleStore is the smallest event store on Pebble with the SQLite
// store's write path: one writer goroutine takes the queued appends,
// checks each against its stream's version (kept in memory, read from the
// head key on a miss), gives the events dense positions and commits them
// in one batch; a second goroutine waits for the batch's fsync and
// answers, while the writer builds the next batch (Pebble's
// ApplyNoSyncWait and SyncWait), as the SQLite store's syncer does.
//
// Keys: e<position> holds an event, v<stream>\x00<version> its position
// (for reading a stream), h<stream> the stream's version and position.
type pebbleStore struct {
	db      *pebble.DB
	reqs    chan *pebbleReq
	synced  chan *pebbleBatch
	done    chan struct{}
	commits atomic.Uint64
	head    uint64
	heads   map[string][2]uint64
	mu      sync.Mutex
	closed  bool
}

type pebbleReq struct {
	stream   string
	expected domain.ExpectedVersion
	events   []domain.NewEvent
	res      domain.AppendResult
	err      error
	done     chan struct{}
}

type pebbleBatch struct {
	b    *pebble.Batch
	reqs []*pebbleReq
}

func openPebble(dir string) (*pebbleStore, error) {
	db, err := pebble.Open(dir, &pebble.Options{Logger: quietLogger{}})
	if err != nil {
		return nil, err
	}
	s := &pebbleStore{db: db, reqs: make(chan *pebbleReq, 4096), synced: make(chan *pebbleBatch, 16), done: make(chan struct{}), heads: map[string][2]uint64{}}
	go s.write()
	go s.answer()
	return s, nil
}

func (s *pebbleStore) Append(ctx context.Context, stream string, expected domain.ExpectedVersion, events ...domain.NewEvent) (domain.AppendResult, error) {
	r := &pebbleReq{stream: stream, expected: expected, events: events, done: make(chan struct{})}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return domain.AppendResult{}, errors.New("closed")
	}
	s.reqs <- r
	s.mu.Unlock()
	<-r.done
	return r.res, r.err
}

func (s *pebbleStore) Close() error {
	s.mu.Lock()
	s.closed = true
	close(s.reqs)
	s.mu.Unlock()
	<-s.done
	return s.db.Close()
}

func (s *pebbleStore) streamHead(stream string) ([2]uint64, error) {
	if h, ok := s.heads[stream]; ok {
		return h, nil
	}
	v, closer, err := s.db.Get([]byte("h" + stream))
	if errors.Is(err, pebble.ErrNotFound) {
		return [2]uint64{}, nil
	}
	if err != nil {
		return [2]uint64{}, err
	}
	defer closer.Close()
	return [2]uint64{binary.BigEndian.Uint64(v), binary.BigEndian.Uint64(v[8:])}, nil
}

func (s *pebbleStore) write() {
	defer close(s.synced)
	var key, val []byte
	for r := range s.reqs {
		reqs := []*pebbleReq{r}
	fill:
		for len(reqs) < 1024 {
			select {
			case r, ok := <-s.reqs:
				if !ok {
					break fill
				}
				reqs = append(reqs, r)
			default:
				break fill
			}
		}
		b := s.db.NewBatch()
		now := time.Now().UnixNano()
		for _, r := range reqs {
			h, err := s.streamHead(r.stream)
			if err != nil {
				r.err = err
				continue
			}
			if !r.expected.Matches(h[0]) {
				r.err = &domain.ConcurrencyError{Stream: r.stream, Expected: r.expected, Actual: h[0]}
				continue
			}
			for _, e := range r.events {
				s.head++
				h = [2]uint64{h[0] + 1, s.head}
				key = binary.BigEndian.AppendUint64(append(key[:0], 'e'), s.head)
				val = encodeEvent(val[:0], r.stream, h[0], e, now)
				_ = b.Set(key, val, nil)
				key = binary.BigEndian.AppendUint64(append(append(append(key[:0], 'v'), r.stream...), 0), h[0])
				_ = b.Set(key, binary.BigEndian.AppendUint64(val[:0], s.head), nil)
			}
			key = append(append(key[:0], 'h'), r.stream...)
			val = binary.BigEndian.AppendUint64(binary.BigEndian.AppendUint64(val[:0], h[0]), h[1])
			_ = b.Set(key, val, nil)
			s.heads[r.stream] = h
			r.res = domain.AppendResult{Version: h[0], Position: h[1]}
		}
		if len(s.heads) > 1<<18 {
			clear(s.heads)
		}
		if err := s.db.ApplyNoSyncWait(b, pebble.Sync); err != nil {
			for _, r := range reqs {
				r.err = err
			}
		}
		s.commits.Add(1)
		s.synced <- &pebbleBatch{b: b, reqs: reqs}
	}
}

func (s *pebbleStore) answer() {
	defer close(s.done)
	for pb := range s.synced {
		err := pb.b.SyncWait()
		_ = pb.b.Close()
		for _, r := range pb.reqs {
			if err != nil && r.err == nil {
				r.err = err
			}
			close(r.done)
		}
	}
}

// encodeEvent is the row of an event: stream, version, type, recorded
// time, then data and metadata, each length-prefixed.
func encodeEvent(buf []byte, stream string, version uint64, e domain.NewEvent, now int64) []byte {
	buf = binary.AppendUvarint(buf, uint64(len(stream)))
	buf = append(buf, stream...)
	buf = binary.AppendUvarint(buf, version)
	buf = binary.AppendUvarint(buf, uint64(len(e.Type)))
	buf = append(buf, e.Type...)
	buf = binary.AppendVarint(buf, now)
	buf = binary.AppendUvarint(buf, uint64(len(e.Data)))
	buf = append(buf, e.Data...)
	buf = binary.AppendUvarint(buf, uint64(len(e.Metadata)))
	return append(buf, e.Metadata...)
}

// quietLogger drops Pebble's informational lines.
type quietLogger struct{}

func (quietLogger) Infof(string, ...any)         {}
func (quietLogger) Errorf(f string, args ...any) { fmt.Printf("pebble: "+f+"\n", args...) }
func (quietLogger) Fatalf(f string, args ...any) { panic(fmt.Sprintf(f, args...)) }
