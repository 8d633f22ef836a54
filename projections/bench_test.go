package projections_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/usersync/usersync/domain"
	"github.com/usersync/usersync/eventstore"
	"github.com/usersync/usersync/projections"
)

// benchEvents is the size of the store BenchmarkRebuild replays: 1,000,000
// by default, USERSYNC_BENCH_EVENTS to change it (0 skips).
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

// contactLife is the events of one contact as webhooks make them: an add
// (receipt, user, tags, meta, outcome) and then update_tags webhooks.
func contactLife(c int, n int) []domain.Envelope {
	id := domain.ContactID(c)
	at := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).Add(time.Duration(c) * time.Second)
	wh := fmt.Sprintf("wh-%d-0", c)
	tags := []domain.Tag{{ID: uint64(c%50 + 1), Name: fmt.Sprintf("Tag %d", c%50+1)}, {ID: 100, Name: "Customer"}}
	out := []domain.Envelope{
		{Event: domain.WebhookReceived{WebhookID: wh, Action: "add", ContactID: id.String(), Params: map[string]string{"send_notification": "1"}, Method: "POST", Source: "127.0.0.1", ReceivedAt: at}},
		{Event: domain.UserCreated{UserID: fmt.Sprintf("u-%d", c), ContactID: id, Login: fmt.Sprintf("c%d@example.com", c), Email: fmt.Sprintf("c%d@example.com", c), Role: "subscriber", PasswordHash: "$2a$10$abcdefghijklmnopqrstuuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ01"}},
		{Event: domain.TagsUpdated{Tags: tags, Added: tags}},
		{Event: domain.MetaPulled{Changes: []domain.MetaChange{{Key: "first_name", New: "Ann"}, {Key: "last_name", New: fmt.Sprint(c)}}}},
		{Event: domain.WebhookProcessed{WebhookID: wh, Action: "add", Message: "User created", UserID: fmt.Sprintf("u-%d", c), Changed: []string{"UserCreated", "TagsUpdated", "MetaPulled"}}},
	}
	for i := 1; len(out) < n; i++ {
		wh := fmt.Sprintf("wh-%d-%d", c, i)
		next := []domain.Tag{{ID: uint64((c+i)%50 + 1), Name: fmt.Sprintf("Tag %d", (c+i)%50+1)}, {ID: 100, Name: "Customer"}}
		out = append(out,
			domain.Envelope{Event: domain.WebhookReceived{WebhookID: wh, Action: "update_tags", ContactID: id.String(), Params: map[string]string{}, Method: "GET", Source: "127.0.0.1", ReceivedAt: at}},
			domain.Envelope{Event: domain.TagsUpdated{Tags: next, Added: next[:1], Removed: tags[:1]}},
			domain.Envelope{Event: domain.WebhookProcessed{WebhookID: wh, Action: "update_tags", Message: "User updated", UserID: fmt.Sprintf("u-%d", c), Changed: []string{"TagsUpdated"}}},
		)
		tags = next
	}
	for i := range out {
		out[i].OccurredAt, out[i].WebhookID = at, wh
	}
	return out[:n]
}

// loadContacts fills a store with n events, 11 per contact, appended by 64
// writers (one stream each at a time), as the server would.
func loadContacts(b *testing.B, store *eventstore.SQLite, n int) (users int) {
	const perContact = 11
	contacts := (n + perContact - 1) / perContact
	work := make(chan int)
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for c := range work {
				size := min(perContact, n-(c-1)*perContact)
				raw, err := domain.EncodeAll(contactLife(c, size))
				if err == nil {
					_, err = store.Append(context.Background(), domain.ContactID(c).Stream(), domain.NoStream(), raw...)
				}
				if err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	for c := 1; c <= contacts; c++ {
		work <- c
	}
	close(work)
	wg.Wait()
	select {
	case err := <-errs:
		b.Fatal(err)
	default:
	}
	users = n / perContact
	if n%perContact >= 2 {
		users++ // the last contact's events include its UserCreated
	}
	return users
}

// BenchmarkRebuild rebuilds every view from a store of 1,000,000 events
// (USERSYNC_BENCH_EVENTS) and reports events/s, in two cases:
//
//   - into-empty-views: into a new views file, as after deleting views.db;
//   - over-current-views: over views already up to date, as usersync rebuild
//     or POST /api/rebuild on a running installation.
//
// Both build a new file and swap it in, so they cost about the same. Every
// receipt is kept (no retention): the most a rebuild writes. Besides
// events/s it reports events per CPU-second, which a shared machine
// disturbs less.
func BenchmarkRebuild(b *testing.B) {
	n := benchEvents(b)
	dir := b.TempDir()
	ctx := context.Background()
	// USERSYNC_BENCH_STORE keeps the store between runs: a directory whose
	// events.db is filled on the first run and reused (with as many events)
	// afterwards, e.g. for usersync rebuild --data under /usr/bin/time -v.
	storeDir := os.Getenv("USERSYNC_BENCH_STORE")
	if storeDir == "" {
		storeDir = dir
	}
	_, statErr := os.Stat(filepath.Join(storeDir, "events.db"))
	store, err := eventstore.Open(ctx, filepath.Join(storeDir, "events.db"))
	if err != nil {
		b.Fatal(err)
	}
	defer store.Close()
	users := n / 11
	if n%11 >= 2 {
		users++
	}
	if statErr != nil {
		start := time.Now()
		users = loadContacts(b, store, n)
		b.Logf("loaded %d events (%d users) in %s", n, users, time.Since(start).Round(time.Millisecond))
	} else if head, err := store.Head(ctx); err != nil || head != uint64(n) {
		b.Fatalf("%s holds %d events (%v), want %d", storeDir, head, err, n)
	}
	// The store copies its log into events.db in the background after
	// large appends; closing it waits for that, so nothing timed below
	// shares the machine with it.
	if err := store.Close(); err != nil {
		b.Fatal(err)
	}
	if store, err = eventstore.Open(ctx, filepath.Join(storeDir, "events.db")); err != nil {
		b.Fatal(err)
	}

	var cpuTotal time.Duration
	rebuild := func(b *testing.B, views *projections.Views) time.Duration {
		cpu0 := cpuTime()
		stats, err := views.Rebuild(ctx, store, nil)
		cpu := cpuTime() - cpu0
		cpuTotal += cpu
		if err != nil {
			b.Fatal(err)
		}
		if stats.Events != uint64(n) || stats.Users != users {
			b.Fatalf("rebuilt %d events, %d users; want %d, %d", stats.Events, stats.Users, n, users)
		}
		// The rebuild leaves copying its log into views.db to a background
		// checkpoint: timed here, outside the figure, as the server
		// answers meanwhile.
		b.StopTimer()
		ck := time.Now()
		if err := views.CheckpointWAL(ctx); err != nil {
			b.Fatal(err)
		}
		b.Logf("read+decode+apply+write %s, index %s, catch up+swap %s, %d rows, CPU %s (%.1f cores); then checkpoint %s; peak RSS so far %d MB",
			stats.ReadApply.Round(time.Millisecond), stats.Index.Round(time.Millisecond), (stats.Duration - stats.ReadApply - stats.Index).Round(time.Millisecond),
			stats.Rows, cpu.Round(time.Millisecond), cpu.Seconds()/stats.Duration.Seconds(),
			time.Since(ck).Round(time.Millisecond), peakRSS()>>20)
		b.StartTimer()
		return stats.Duration
	}
	open := func(b *testing.B, path string) *projections.Views {
		views, err := projections.Open(ctx, path)
		if err != nil {
			b.Fatal(err)
		}
		return views
	}

	b.Run("into-empty-views", func(b *testing.B) {
		var total time.Duration
		i := 0
		for b.Loop() {
			b.StopTimer()
			i++
			views := open(b, filepath.Join(dir, fmt.Sprintf("empty-%d.db", i)))
			b.StartTimer()
			total += rebuild(b, views)
			b.StopTimer()
			if err := views.Close(); err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
		}
		b.ReportMetric(float64(n)*float64(b.N)/total.Seconds(), "events/s")
		b.ReportMetric(float64(n)*float64(b.N)/cpuTotal.Seconds(), "events/cpu-s")
	})
	b.Run("over-current-views", func(b *testing.B) {
		views := open(b, filepath.Join(dir, "views.db"))
		defer views.Close()
		if _, err := views.Rebuild(ctx, store, nil); err != nil {
			b.Fatal(err)
		}
		if err := views.CheckpointWAL(ctx); err != nil {
			b.Fatal(err)
		}
		b.ResetTimer()
		var total time.Duration
		cpuTotal = 0
		for b.Loop() {
			total += rebuild(b, views)
		}
		b.ReportMetric(float64(n)*float64(b.N)/total.Seconds(), "events/s")
		b.ReportMetric(float64(n)*float64(b.N)/cpuTotal.Seconds(), "events/cpu-s")
	})
}

// peakRSS is the most memory the process has held so far, in bytes.
func peakRSS() int64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return ru.Maxrss << 10 // Linux reports kilobytes
}

// cpuTime is the CPU time the process used so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkHandleBatch applies batches of live events to views on disk, as
// the log's reader does on a running server: contacts' lives (11 events
// each) interleaved over 10,000 contacts, in batches of 256 and 4096
// events. It reports events/s; b.N counts events.
func BenchmarkHandleBatch(b *testing.B) {
	for _, size := range []int{256, 4096} {
		b.Run(fmt.Sprintf("batch-%d", size), func(b *testing.B) {
			ctx := context.Background()
			views, err := projections.Open(ctx, filepath.Join(b.TempDir(), "views.db"))
			if err != nil {
				b.Fatal(err)
			}
			defer views.Close()
			const contacts, perContact = 10_000, 11
			lives := make([][]domain.NewEvent, contacts)
			for c := range lives {
				if lives[c], err = domain.EncodeAll(contactLife(c+1, perContact)); err != nil {
					b.Fatal(err)
				}
			}
			// Round robin over the contacts: each batch touches many.
			var pos uint64
			next := func(i int) domain.RecordedEvent {
				c, n := i%contacts, (i/contacts)%perContact
				pos++
				ev := lives[c][n]
				return domain.RecordedEvent{Position: pos, Stream: domain.ContactID(c + 1).Stream(), Version: uint64(n + 1),
					Type: ev.Type, Data: ev.Data, Metadata: ev.Metadata}
			}
			recs := make([]domain.RecordedEvent, 0, size)
			b.ResetTimer()
			start, cpu0 := time.Now(), cpuTime()
			for i := 0; i < b.N; {
				recs = recs[:0]
				for ; len(recs) < size && i < b.N; i++ {
					recs = append(recs, next(i))
				}
				if _, err := views.HandleBatch(ctx, recs); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "events/s")
			// The machine is shared: CPU time says what the apply costs
			// whatever else runs.
			b.ReportMetric(float64(b.N)/(cpuTime()-cpu0).Seconds(), "events/cpu-s")
		})
	}
}
