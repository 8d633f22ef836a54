package projections_test

// Catch-up at a start: views far behind the log are built aside at rebuild
// speed and swapped in (CatchUpBatch); a stop or a crash at any moment of
// it leaves views that the next start completes.

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/usersync/usersync/domain"
	"github.com/usersync/usersync/eventstore"
	"github.com/usersync/usersync/projections"
)

// logLines is a slog destination a test reads back.
type logLines struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logLines) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logLines) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

func (l *logLines) logger() *slog.Logger { return slog.New(slog.NewTextHandler(l, nil)) }

// waitFor waits (with a deadline) until the log has a line with msg: the
// views are swapped in before the rebuild's last line is written.
func (l *logLines) waitFor(t *testing.T, msg string) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !strings.Contains(l.String(), msg); {
		if time.Now().After(deadline) {
			t.Fatalf("no %q in the log:\n%s", msg, l.String())
		}
		time.Sleep(time.Millisecond)
	}
}

const builtAside = "views built aside and swapped in"

// catchUpStore writes the story and some churn into dir's store, lets live
// views follow them, and returns the live views' rows (the reference) with
// the head. views.db is then removed, as after a loss of the file, and a
// process manager's checkpoint saved in the new one.
func catchUpStore(t *testing.T, dir string) (map[string][][]any, uint64) {
	t.Helper()
	e := start(t, dir)
	e.story()
	e.churn(3, 150, 25)
	e.caughtUp()
	head, err := e.store.Head(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	e.stop()
	want := dump(t, filepath.Join(dir, "views.db"))
	for _, f := range []string{"views.db", "views.db-wal", "views.db-shm"} {
		if err := removeIfThere(filepath.Join(dir, f)); err != nil {
			t.Fatal(err)
		}
	}
	views, err := projections.Open(context.Background(), filepath.Join(dir, "views.db"))
	if err != nil {
		t.Fatal(err)
	}
	if err := views.SaveCheckpoint(context.Background(), welcomeEmail, 7); err != nil {
		t.Fatal(err)
	}
	if err := views.Close(); err != nil {
		t.Fatal(err)
	}
	return want, head
}

// sameViews fails unless the views file at path holds want's rows, with
// the views' checkpoints at head and the process manager's at 7.
func sameViews(t *testing.T, path string, want map[string][][]any, head uint64) {
	t.Helper()
	got := dump(t, path)
	for table := range want {
		if table == "checkpoints" {
			continue
		}
		if !reflect.DeepEqual(want[table], got[table]) {
			t.Errorf("table %s differs from the live views:\nlive  %v\ngot   %v", table, want[table], got[table])
		}
	}
	cps := map[string]int64{}
	for _, row := range got["checkpoints"] {
		cps[row[0].(string)] = row[1].(int64)
	}
	wantCps := map[string]int64{"users": int64(head), "tags": int64(head), "password_returns": int64(head), "webhooks": int64(head), "welcome_mails": int64(head), welcomeEmail: 7}
	if !reflect.DeepEqual(cps, wantCps) {
		t.Errorf("checkpoints %v, want %v", cps, wantCps)
	}
}

func TestCatchUpBatch_ViewsFarBehind_AreBuiltAsideThenFollowTheLog(t *testing.T) {
	// Given a store whose views file was lost.
	dir := t.TempDir()
	want, head := catchUpStore(t, dir)

	// When the views start through CatchUpBatch.
	var logs logLines
	e := startWith(t, dir, func(v *projections.Views, s *eventstore.SQLite) projections.BatchConsumer {
		return v.CatchUpBatch(projections.CatchUp{Log: s, MinBehind: 1})
	}, projections.WithLogger(logs.logger()))
	e.caughtUp()

	// Then they were built aside, hold what the live views held, and the
	// process manager's checkpoint is kept.
	logs.waitFor(t, builtAside)
	e.stop()
	sameViews(t, filepath.Join(dir, "views.db"), want, head)
	if _, err := os.Stat(filepath.Join(dir, "views.db.rebuild")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("views.db.rebuild left behind: %v", err)
	}

	// And from there they go on batch by batch, also after a restart: a
	// new event is applied, with no second rebuild.
	var again logLines
	e = startWith(t, dir, func(v *projections.Views, s *eventstore.SQLite) projections.BatchConsumer {
		return v.CatchUpBatch(projections.CatchUp{Log: s, MinBehind: 1})
	}, projections.WithLogger(again.logger()))
	e.append(domain.ContactID(1).Stream(), "w9", domain.RoleChanged{Old: "subscriber", New: "customer"})
	e.caughtUp()
	if ann, _ := e.user(1); ann.Role != "customer" {
		t.Fatalf("after the catch-up: %+v", ann)
	}
	if strings.Contains(again.String(), "building them aside") {
		t.Errorf("rebuilt aside again after a restart:\n%s", again.String())
	}
}

// storeAt opens dir's store, closed at the end of the test.
func storeAt(t *testing.T, dir string) *eventstore.SQLite {
	t.Helper()
	s, err := eventstore.Open(context.Background(), filepath.Join(dir, "events.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestCatchUpBatch_ViewsCloseToTheHead_CatchUpBatchByBatch(t *testing.T) {
	// Given views that applied most of the log, and events appended while
	// they were stopped.
	ctx := context.Background()
	dir := t.TempDir()
	e := start(t, dir)
	e.story()
	e.caughtUp()
	e.stop()
	store := storeAt(t, dir)
	raw, err := domain.EncodeAll([]domain.Envelope{{Event: domain.RoleChanged{Old: "subscriber", New: "customer"}, OccurredAt: t0, WebhookID: "w9"}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := store.Append(ctx, domain.ContactID(1).Stream(), domain.AnyVersion(), raw...); err != nil {
		t.Fatal(err)
	}
	head, _ := store.Head(ctx)
	store.Close()

	// When they start through CatchUpBatch.
	var logs logLines
	e = startWith(t, dir, func(v *projections.Views, s *eventstore.SQLite) projections.BatchConsumer {
		return v.CatchUpBatch(projections.CatchUp{Log: s, MinBehind: 1})
	}, projections.WithLogger(logs.logger()))
	e.caughtUp()

	// Then they caught up batch by batch: less than half the log was
	// missing.
	if strings.Contains(logs.String(), "building them aside") {
		t.Fatalf("rebuilt aside for one event:\n%s", logs.String())
	}
	if ann, _ := e.user(1); ann.Role != "customer" {
		t.Fatalf("after the catch-up: %+v", ann)
	}
	if got, _ := e.views.Position("users"); got != head {
		t.Fatalf("users at %d, want %d", got, head)
	}
}

// stopLog is the store as a rebuild reads it, which stops the rebuild
// (cancels its context) once it has read the first events.
type stopLog struct {
	projections.EventLog
	stop func()
}

func (l stopLog) ReadAll(ctx context.Context, after uint64, limit int) ([]domain.RecordedEvent, error) {
	recs, err := l.EventLog.ReadAll(ctx, after, limit)
	l.stop()
	return recs, err
}

func TestCatchUpBatch_StoppedWhileBuildingAside_TheNextStartBuildsThem(t *testing.T) {
	// Given a store whose views file was lost.
	ctx := context.Background()
	dir := t.TempDir()
	want, head := catchUpStore(t, dir)
	store := storeAt(t, dir)
	first, err := store.ReadAll(ctx, 0, 100)
	if err != nil {
		t.Fatal(err)
	}

	// When the catch-up is stopped while the views are built aside.
	views, err := projections.Open(ctx, filepath.Join(dir, "views.db"))
	if err != nil {
		t.Fatal(err)
	}
	stopCtx, stop := context.WithCancel(ctx)
	c := views.CatchUpBatch(projections.CatchUp{Log: stopLog{store, stop}, MinBehind: 1})
	_, err = c.HandleBatch(stopCtx, first)

	// Then the batch fails for the stop, nothing moved, and nothing is
	// left aside.
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("HandleBatch while stopping: %v, want context.Canceled", err)
	}
	if pos, _ := c.Position(ctx); pos != 0 {
		t.Fatalf("views at %d after a stopped catch-up, want 0", pos)
	}
	if _, err := os.Stat(filepath.Join(dir, "views.db.rebuild")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("views.db.rebuild left behind: %v", err)
	}
	if err := views.Close(); err != nil {
		t.Fatal(err)
	}
	store.Close()

	// And the next start builds them and keeps the process's checkpoint.
	e := startWith(t, dir, func(v *projections.Views, s *eventstore.SQLite) projections.BatchConsumer {
		return v.CatchUpBatch(projections.CatchUp{Log: s, MinBehind: 1})
	})
	e.caughtUp()
	e.stop()
	sameViews(t, filepath.Join(dir, "views.db"), want, head)
}

// The crash: a child process (this test binary, TestCatchUpBatch_CrashChild)
// builds the views aside and kills itself with SIGKILL at a moment of it;
// the next start must complete them.

// crashLog kills the process at the chosen read of the log by a catch-up:
// "load" its first read of events (the bulk load under way), "swap" its
// third read of the head (the load and the indexes done, the catch-up and
// the swap to come; the first is the catch-up's decision, the second the
// rebuild's start), "after" its fourth (the new file swapped in).
type crashLog struct {
	projections.EventLog
	at    string
	heads *int
}

func (l crashLog) Head(ctx context.Context) (uint64, error) {
	*l.heads++
	if (l.at == "swap" && *l.heads == 3) || (l.at == "after" && *l.heads == 4) {
		syscall.Kill(os.Getpid(), syscall.SIGKILL)
	}
	return l.EventLog.Head(ctx)
}

func (l crashLog) ReadAll(ctx context.Context, after uint64, limit int) ([]domain.RecordedEvent, error) {
	recs, err := l.EventLog.ReadAll(ctx, after, limit)
	if l.at == "load" {
		syscall.Kill(os.Getpid(), syscall.SIGKILL)
	}
	return recs, err
}

func TestCatchUpBatch_CrashChild(t *testing.T) {
	dir, at := os.Getenv("USERSYNC_CATCHUP_CRASH_DIR"), os.Getenv("USERSYNC_CATCHUP_CRASH_AT")
	if dir == "" {
		t.Skip("the child of TestCatchUpBatch_KilledWhileBuildingAside")
	}
	ctx := context.Background()
	store := storeAt(t, dir)
	views, err := projections.Open(ctx, filepath.Join(dir, "views.db"))
	if err != nil {
		t.Fatal(err)
	}
	first, err := store.ReadAll(ctx, 0, 100)
	if err != nil {
		t.Fatal(err)
	}
	heads := 0
	c := views.CatchUpBatch(projections.CatchUp{Log: crashLog{store, at, &heads}, MinBehind: 1})
	if _, err := c.HandleBatch(ctx, first); err != nil {
		t.Fatal(err)
	}
	t.Fatalf("not killed at %q", at)
}

func TestCatchUpBatch_KilledWhileBuildingAside_TheNextStartCompletesThem(t *testing.T) {
	if testing.Short() {
		t.Skip("runs child processes")
	}
	for _, at := range []string{"load", "swap", "after"} {
		t.Run(at, func(t *testing.T) {
			// Given a store whose views file was lost.
			dir := t.TempDir()
			want, head := catchUpStore(t, dir)

			// When the process building the views aside is killed.
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestCatchUpBatch_CrashChild$", "-test.count=1")
			cmd.Env = append(os.Environ(), "USERSYNC_CATCHUP_CRASH_DIR="+dir, "USERSYNC_CATCHUP_CRASH_AT="+at)
			out, err := cmd.CombinedOutput()
			var exit *exec.ExitError
			if !errors.As(err, &exit) || exit.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
				t.Fatalf("the child was not killed at %q: %v\n%s", at, err, out)
			}
			if at == "swap" {
				if _, err := os.Stat(filepath.Join(dir, "views.db.rebuild")); err != nil {
					t.Fatalf("no views.db.rebuild after a kill before the swap: %v", err)
				}
			}

			// Then the next start catches up: the views hold what the live
			// views held, the process's checkpoint is kept, and nothing
			// is left aside.
			var logs logLines
			e := startWith(t, dir, func(v *projections.Views, s *eventstore.SQLite) projections.BatchConsumer {
				return v.CatchUpBatch(projections.CatchUp{Log: s, MinBehind: 1})
			}, projections.WithLogger(logs.logger()))
			e.caughtUp()
			if at != "after" {
				logs.waitFor(t, builtAside)
			}
			e.stop()
			sameViews(t, filepath.Join(dir, "views.db"), want, head)
			if _, err := os.Stat(filepath.Join(dir, "views.db.rebuild")); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("views.db.rebuild left behind: %v", err)
			}
			// Killed after the swap, the views were complete: no second
			// rebuild.
			if at == "after" && strings.Contains(logs.String(), "building them aside") {
				t.Errorf("killed after the swap: rebuilt aside again at the next start:\n%s", logs.String())
			}
		})
	}
}

func TestWaitAside_WaitsOnlyWhileFarBehindViewsAreBuiltAside(t *testing.T) {
	// Given a store whose views file was lost, and views far behind it.
	ctx := context.Background()
	dir := t.TempDir()
	_, head := catchUpStore(t, dir)
	store := storeAt(t, dir)
	views, err := projections.Open(ctx, filepath.Join(dir, "views.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer views.Close()
	c := views.CatchUpBatch(projections.CatchUp{Log: store, MinBehind: 1})

	// When a process manager waits on them.
	waited := make(chan error, 1)
	go func() { waited <- c.WaitAside(ctx) }()

	// Then it waits until their first batch has built them aside.
	select {
	case err := <-waited:
		t.Fatalf("WaitAside returned (%v) before the views were built", err)
	default:
	}
	first, err := store.ReadAll(ctx, 0, 50)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.HandleBatch(ctx, first); err != nil {
		t.Fatal(err)
	}
	deadline, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	select {
	case err := <-waited:
		if err != nil {
			t.Fatal(err)
		}
	case <-deadline.Done():
		t.Fatal("WaitAside still waiting after the views were built")
	}
	if pos, _ := c.Position(ctx); pos != head {
		t.Fatalf("views at %d, want %d", pos, head)
	}

	// And views near the head, or fed by Batch, never make it wait.
	for name, bc := range map[string]projections.BatchConsumer{
		"caught up": views.CatchUpBatch(projections.CatchUp{Log: store, MinBehind: 1}),
		"Batch":     views.Batch(),
	} {
		if err := bc.WaitAside(deadline); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
}
