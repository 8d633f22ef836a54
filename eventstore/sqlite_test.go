package eventstore_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	_ "modernc.org/sqlite"

	"github.com/usersync/usersync/domain"
	"github.com/usersync/usersync/eventstore"
	"github.com/usersync/usersync/eventstore/eventstoretest"
)

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func openAt(t *testing.T, path string, opts ...eventstore.Option) *eventstore.SQLite {
	t.Helper()
	s, err := eventstore.Open(testContext(t), path, opts...)
	if err != nil {
		t.Fatalf("Open(%s): %v", path, err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestSQLiteConformance(t *testing.T) {
	t.Parallel()
	eventstoretest.Run(t, eventstoretest.Features{DensePositions: true}, func(t *testing.T) eventstore.Store {
		return openAt(t, filepath.Join(t.TempDir(), "events.db"))
	})
}

func TestSQLiteConformanceSQLiteSync(t *testing.T) {
	t.Parallel()
	eventstoretest.Run(t, eventstoretest.Features{DensePositions: true}, func(t *testing.T) eventstore.Store {
		return openAt(t, filepath.Join(t.TempDir(), "events.db"), eventstore.WithSQLiteSync())
	})
}

func TestSQLiteRestart(t *testing.T) {
	t.Parallel()
	eventstoretest.RunRestart(t, eventstoretest.Features{DensePositions: true}, func(t *testing.T, dir string) eventstore.Store {
		return openAt(t, filepath.Join(dir, "DATA", "events.db"))
	})
}

func TestDensePositions(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	s := openAt(t, filepath.Join(t.TempDir(), "events.db"))
	var wg sync.WaitGroup
	for w := range 16 {
		wg.Go(func() {
			var v uint64
			for i := range 30 {
				// Some appends conflict; they must not leave holes.
				ev := domain.ExactVersion(v)
				if i%7 == 3 {
					ev = domain.ExactVersion(v + 999)
				}
				res, err := s.Append(ctx, fmt.Sprintf("s-%d", w), ev, eventstoretest.Events("E", 1+i%3)...)
				switch {
				case err == nil && i%7 != 3:
					v = res.Version
				case errors.Is(err, domain.ErrConcurrency) && i%7 == 3:
				default:
					t.Errorf("append %d: %+v, %v", i, res, err)
					return
				}
			}
		})
	}
	wg.Wait()
	all, err := s.ReadAll(ctx, 0, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	for i, e := range all {
		if e.Position != uint64(i+1) {
			t.Fatalf("event %d has position %d: positions are not dense", i, e.Position)
		}
	}
	head, err := s.Head(ctx)
	if err != nil || head != uint64(len(all)) {
		t.Fatalf("Head = %d, %v; want %d", head, err, len(all))
	}
}

func TestLargeAppendAndParallelRead(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	s := openAt(t, filepath.Join(t.TempDir(), "events.db"))
	// One append larger than the writer's batch bounds and the largest
	// multi-row insert, plus a few small ones.
	res, err := s.Append(ctx, "big", domain.NoStream(), eventstoretest.Events("E", 4000)...)
	if err != nil {
		t.Fatal(err)
	}
	if res.Version != 4000 || res.Position != 4000 {
		t.Fatalf("big append = %+v", res)
	}
	for i := range 10 {
		if _, err := s.Append(ctx, "small", domain.AnyVersion(), eventstoretest.Event("F", i)); err != nil {
			t.Fatal(err)
		}
	}
	// Read the log in pages large enough to be split across connections,
	// starting at odd places.
	for _, tc := range []struct {
		after uint64
		limit int
	}{{0, 4010}, {0, 50000}, {1, 3777}, {345, 3000}, {3990, 5000}, {4009, 10}} {
		evs, err := s.ReadAll(ctx, tc.after, tc.limit)
		if err != nil {
			t.Fatal(err)
		}
		want := min(tc.limit, 4010-int(tc.after))
		if len(evs) != want {
			t.Fatalf("ReadAll(%d, %d) returned %d events, want %d", tc.after, tc.limit, len(evs), want)
		}
		for i, e := range evs {
			if e.Position != tc.after+uint64(i)+1 {
				t.Fatalf("ReadAll(%d, %d): event %d at position %d", tc.after, tc.limit, i, e.Position)
			}
			if e.Position <= 4000 && (e.Stream != "big" || e.Version != e.Position || string(e.Data) != fmt.Sprintf(`{"n":%d}`, e.Version-1)) {
				t.Fatalf("event %d = %+v", e.Position, e)
			}
		}
	}
	evs, err := s.ReadStream(ctx, "big")
	if err != nil || len(evs) != 4000 {
		t.Fatalf("ReadStream(big) = %d events, %v", len(evs), err)
	}
}

func TestSecondOpenIsRefused(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "events.db")
	s := openAt(t, path)
	_, err := eventstore.Open(testContext(t), path)
	if !errors.Is(err, eventstore.ErrInUse) || !strings.Contains(err.Error(), "already in use by another process") || !strings.Contains(err.Error(), path) {
		t.Fatalf("second Open: err = %v, want ErrInUse naming %s", err, path)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s2 := openAt(t, path)
	if err := s2.Close(); err != nil {
		t.Fatal(err)
	}
}

// wantFileError checks that err is an error naming path.
func wantFileError(t *testing.T, err error, path string, what string) {
	t.Helper()
	if err == nil {
		t.Fatalf("%s: no error", what)
	}
	if !strings.Contains(err.Error(), path) {
		t.Fatalf("%s: error %q does not name %s", what, err, path)
	}
	t.Logf("%s: %v", what, err)
}

func TestGarbageFileIsRefused(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	for name, content := range map[string][]byte{
		"short":   []byte("hello"),
		"garbage": []byte(strings.Repeat("not a database at all\n", 400)),
		"header":  append([]byte("SQLite format 3\x00"), make([]byte, 5000)...),
	} {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(dir, name+".db")
			if err := os.WriteFile(path, content, 0o644); err != nil {
				t.Fatal(err)
			}
			_, err := eventstore.Open(testContext(t), path)
			wantFileError(t, err, path, "Open of "+name)
			if !errors.Is(err, eventstore.ErrCorrupt) {
				t.Fatalf("err = %v, want ErrCorrupt", err)
			}
			// The refused file is left as it was.
			got, _ := os.ReadFile(path)
			if string(got) != string(content) {
				t.Fatal("Open changed a file it refused")
			}
		})
	}
}

func TestForeignSQLiteFileIsRefused(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "other.db")
	db, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(`CREATE TABLE users(id INTEGER PRIMARY KEY, name TEXT)`); err != nil {
		t.Fatal(err)
	}
	db.Close()
	_, err = eventstore.Open(testContext(t), path)
	wantFileError(t, err, path, "Open of a foreign SQLite file")
	if !strings.Contains(err.Error(), "not a usersync event store") {
		t.Fatalf("err = %v, want it to say the file is not an event store", err)
	}
}

func TestNewerSchemaIsRefused(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "events.db")
	s := openAt(t, path)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	db, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(`PRAGMA user_version = 99`); err != nil {
		t.Fatal(err)
	}
	db.Close()
	_, err = eventstore.Open(testContext(t), path)
	wantFileError(t, err, path, "Open of a newer store")
	if !strings.Contains(err.Error(), "newer") {
		t.Fatalf("err = %v, want it to say the schema is newer", err)
	}
}

// fillStore writes n events of about 300 bytes and closes the store.
func fillStore(t *testing.T, path string, n int) {
	t.Helper()
	s := openAt(t, path)
	pad := strings.Repeat("x", 250)
	evs := make([]domain.NewEvent, 0, 500)
	for i := 0; i < n; i += 500 {
		evs = evs[:0]
		for j := i; j < min(n, i+500); j++ {
			evs = append(evs, domain.NewEvent{Type: "E", Data: fmt.Appendf(nil, `{"n":%d,"pad":"%s"}`, j, pad)})
		}
		if _, err := s.Append(testContext(t), fmt.Sprintf("s-%d", i%7), domain.AnyVersion(), evs...); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path + "-wal"); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("after Close the write-ahead log is still there (%v)", err)
	}
}

func TestTruncatedFileIsRefused(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "events.db")
	fillStore(t, path, 3000)
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, size := range []int64{st.Size() / 2, st.Size()/2 + 1000, st.Size() - 4096} {
		if err := os.Truncate(path, size); err != nil {
			t.Fatal(err)
		}
		_, err = eventstore.Open(testContext(t), path)
		wantFileError(t, err, path, fmt.Sprintf("Open of a store cut to %d of %d bytes", size, st.Size()))
		if !errors.Is(err, eventstore.ErrCorrupt) {
			t.Fatalf("err = %v, want ErrCorrupt", err)
		}
	}
}

func TestDamagedPagesFailReads(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "events.db")
	fillStore(t, path, 3000)
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	// Overwrite a stretch of pages in the middle (size unchanged).
	mid := len(b) / 2 / 4096 * 4096
	for i := mid; i < mid+8*4096 && i < len(b); i++ {
		b[i] = byte(i*7 + 13)
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	ctx := testContext(t)
	s, err := eventstore.Open(ctx, path)
	if err != nil {
		// Detected at Open: fine, as long as it names the file.
		wantFileError(t, err, path, "Open of a damaged store")
		return
	}
	defer s.Close()
	var readErr error
	var after uint64
	for readErr == nil {
		var evs []domain.RecordedEvent
		evs, readErr = s.ReadAll(ctx, after, 1000)
		if readErr == nil && len(evs) == 0 {
			break
		}
		if readErr == nil {
			after = evs[len(evs)-1].Position
		}
	}
	wantFileError(t, readErr, path, "reading a damaged store")
	if !errors.Is(readErr, eventstore.ErrCorrupt) {
		t.Fatalf("err = %v, want ErrCorrupt", readErr)
	}
}

func TestAppendValidation(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	s := openAt(t, filepath.Join(t.TempDir(), "events.db"))
	if _, err := s.Append(ctx, "", domain.AnyVersion(), eventstoretest.Event("E", 1)); !errors.Is(err, eventstore.ErrInvalid) {
		t.Fatalf("empty stream: %v", err)
	}
	if _, err := s.Append(ctx, "a", domain.AnyVersion(), domain.NewEvent{}); !errors.Is(err, eventstore.ErrInvalid) {
		t.Fatalf("empty type: %v", err)
	}
	if _, err := s.ReadAll(ctx, 0, 0); err == nil {
		t.Fatal("ReadAll with limit 0 succeeded")
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Append(ctx, "a", domain.AnyVersion(), eventstoretest.Event("E", 1)); !errors.Is(err, eventstore.ErrClosed) {
		t.Fatalf("append after Close: %v, want ErrClosed", err)
	}
	if _, err := s.Head(ctx); !errors.Is(err, eventstore.ErrClosed) {
		t.Fatalf("Head after Close: %v, want ErrClosed", err)
	}
}

func TestStreamCacheEviction(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	s := openAt(t, filepath.Join(t.TempDir(), "events.db"), eventstore.WithStreamCache(4))
	for round := range 3 {
		for i := range 20 {
			stream := fmt.Sprintf("s-%d", i)
			if _, err := s.Append(ctx, stream, domain.ExactVersion(uint64(round)), eventstoretest.Event("E", round)); err != nil {
				t.Fatalf("round %d %s: %v", round, stream, err)
			}
			if _, err := s.Append(ctx, stream, domain.ExactVersion(uint64(round)), eventstoretest.Event("E", round)); !errors.Is(err, domain.ErrConcurrency) {
				t.Fatalf("round %d %s: stale version accepted: %v", round, stream, err)
			}
		}
	}
}

func TestCommitObserver(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	var mu sync.Mutex
	var appends, commits int
	var total time.Duration
	s := openAt(t, filepath.Join(t.TempDir(), "events.db"), eventstore.WithCommitObserver(func(n int, d time.Duration) {
		mu.Lock()
		defer mu.Unlock()
		appends += n
		commits++
		total += d
	}))
	for i := range 10 {
		if _, err := s.Append(ctx, "a", domain.ExactVersion(uint64(i)), eventstoretest.Event("E", i)); err != nil {
			t.Fatal(err)
		}
	}
	// Refused and empty appends commit nothing.
	if _, err := s.Append(ctx, "a", domain.NoStream(), eventstoretest.Event("E", 0)); !errors.Is(err, domain.ErrConcurrency) {
		t.Fatal(err)
	}
	if _, err := s.Append(ctx, "a", domain.AnyVersion()); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	// Each append was answered after its commit was observed.
	if appends != 10 || commits != 10 || total <= 0 {
		t.Fatalf("observed %d appends in %d commits taking %v, want 10 in 10", appends, commits, total)
	}
}
