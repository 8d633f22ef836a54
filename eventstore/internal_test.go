package eventstore

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/usersync/usersync/domain"
)

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func ev(n int) domain.NewEvent {
	return domain.NewEvent{Type: "E", Data: fmt.Appendf(nil, `{"n":%d}`, n)}
}

// TestGroupCommitIsolatesConflicts queues appends while the writer is held,
// so that they are all taken in one batch, and checks each is judged on
// its own, in queue order, in one transaction.
func TestGroupCommitIsolatesConflicts(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	gate := make(chan struct{})
	s, err := Open(ctx, filepath.Join(t.TempDir(), "events.db"), withWriterGate(gate))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()

	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	type want struct {
		err      error // nil, domain.ErrConcurrency or context.Canceled
		version  uint64
		position uint64
	}
	cases := []struct {
		ctx      context.Context
		stream   string
		expected domain.ExpectedVersion
		n        int
		want     want
	}{
		{ctx, "a", domain.NoStream(), 2, want{nil, 2, 2}},
		{ctx, "a", domain.NoStream(), 1, want{domain.ErrConcurrency, 0, 0}}, // lost to the first
		{ctx, "b", domain.ExactVersion(5), 1, want{domain.ErrConcurrency, 0, 0}},
		{ctx, "b", domain.NoStream(), 1, want{nil, 1, 3}},
		{ctx, "a", domain.ExactVersion(2), 3, want{nil, 5, 6}}, // sees the first append of the batch
		{ctx, "a", domain.ExactVersion(5), 0, want{nil, 5, 6}}, // an empty append only checks
		{ctx, "a", domain.ExactVersion(4), 0, want{domain.ErrConcurrency, 0, 0}},
		{cancelled, "c", domain.AnyVersion(), 1, want{context.Canceled, 0, 0}},
		{ctx, "c", domain.AnyVersion(), 1, want{nil, 1, 7}},
	}
	reqs := make([]*appendReq, len(cases))
	for i, c := range cases {
		evs := make([]domain.NewEvent, c.n)
		for j := range evs {
			evs[j] = ev(i*10 + j)
		}
		reqs[i] = &appendReq{ctx: c.ctx, stream: c.stream, expected: c.expected, events: evs, done: make(chan struct{})}
		s.reqs <- reqs[i]
	}
	commits := s.commits.Load()
	close(gate)
	for i, r := range reqs {
		select {
		case <-r.done:
		case <-ctx.Done():
			t.Fatal("writer did not answer")
		}
		w := cases[i].want
		switch {
		case w.err == nil && r.err != nil:
			t.Fatalf("append %d: %v", i, r.err)
		case w.err != nil && !errors.Is(r.err, w.err):
			t.Fatalf("append %d: err = %v, want %v", i, r.err, w.err)
		case w.err == nil && (r.res.Version != w.version || r.res.Position != w.position):
			t.Fatalf("append %d: %+v, want version %d position %d", i, r.res, w.version, w.position)
		}
	}
	if got := s.commits.Load() - commits; got != 1 {
		t.Fatalf("the batch took %d commits, want 1", got)
	}
	all, err := s.ReadAll(ctx, 0, 100)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range all {
		got = append(got, fmt.Sprintf("%d:%s@%d", e.Position, e.Stream, e.Version))
	}
	if want := "1:a@1 2:a@2 3:b@1 4:a@3 5:a@4 6:a@5 7:c@1"; strings.Join(got, " ") != want {
		t.Fatalf("log = %s, want %s", strings.Join(got, " "), want)
	}
}

// TestLogStaysBounded checks that the write-ahead log is checkpointed and
// restarted while appends keep coming.
func TestLogStaysBounded(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	path := filepath.Join(t.TempDir(), "events.db")
	const background, writer = 50, 200
	s, err := Open(ctx, path, withCheckpoints(background, writer))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	big := domain.NewEvent{Type: "E", Data: []byte(strings.Repeat("x", 3000))}
	batch := make([]domain.NewEvent, 20)
	for i := range batch {
		batch[i] = big
	}
	// About twenty writer checkpoints' worth of pages: without
	// checkpoints the log would grow to about 13 MB.
	for i := range 200 {
		if _, err := s.Append(ctx, fmt.Sprintf("s-%d", i%10), domain.AnyVersion(), batch...); err != nil {
			t.Fatal(err)
		}
	}
	st, err := os.Stat(path + "-wal")
	if err != nil {
		t.Fatal(err)
	}
	// A checkpoint can be skipped while the other one runs, or while a
	// reader holds an old snapshot, so the bound is loose.
	if limit := int64(3*(writer+2*background)) * 4200; st.Size() > limit {
		t.Fatalf("write-ahead log is %d bytes, want at most %d", st.Size(), limit)
	}
}

const crashEnv = "USERSYNC_EVENTSTORE_CRASH_CHILD"

// TestCrashDurability runs a child process that appends as fast as it can
// and prints every acknowledged append, kills it with SIGKILL, and checks
// that every acknowledged event is in the reopened store.
func TestCrashDurability(t *testing.T) {
	if dir := os.Getenv(crashEnv); dir != "" {
		crashChild(dir)
		return
	}
	if testing.Short() {
		t.Skip("starts a child process")
	}
	t.Parallel()
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^TestCrashDurability$", "-test.count=1")
	cmd.Env = append(os.Environ(), crashEnv+"="+dir)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	type ack struct {
		stream            string
		version, position uint64
	}
	acks := make(chan ack, 1024)
	readDone := make(chan error, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			f := strings.Fields(sc.Text())
			if len(f) != 4 || f[0] != "ack" {
				continue
			}
			v, err1 := strconv.ParseUint(f[2], 10, 64)
			p, err2 := strconv.ParseUint(f[3], 10, 64)
			if err1 != nil || err2 != nil {
				continue
			}
			acks <- ack{f[1], v, p}
		}
		close(acks)
		readDone <- sc.Err()
	}()

	var got []ack
	guard := time.After(30 * time.Second)
	killed := false
	for a := range acks {
		got = append(got, a)
		if len(got) == 1500 && !killed {
			if err := cmd.Process.Kill(); err != nil {
				t.Fatal(err)
			}
			killed = true
		}
		select {
		case <-guard:
			cmd.Process.Kill()
			t.Fatal("child too slow")
		default:
		}
	}
	<-readDone
	_ = cmd.Wait()
	if !killed {
		t.Fatalf("child ended by itself after %d acks", len(got))
	}

	s, err := Open(testCtx(t), filepath.Join(dir, "events.db"))
	if err != nil {
		t.Fatalf("reopen after SIGKILL: %v", err)
	}
	defer s.Close()
	all, err := s.ReadAll(testCtx(t), 0, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	byPos := make(map[uint64]domain.RecordedEvent, len(all))
	versions := map[string]uint64{}
	for i, e := range all {
		if e.Position != uint64(i+1) {
			t.Fatalf("positions not dense after the crash: event %d at %d", i, e.Position)
		}
		if e.Version != versions[e.Stream]+1 {
			t.Fatalf("stream %s: version %d after %d", e.Stream, e.Version, versions[e.Stream])
		}
		versions[e.Stream] = e.Version
		byPos[e.Position] = e
	}
	for _, a := range got {
		e, ok := byPos[a.position]
		if !ok || e.Stream != a.stream || e.Version != a.version {
			t.Fatalf("acknowledged %s@%d at %d is missing after the crash (found %+v)", a.stream, a.version, a.position, e)
		}
	}
	t.Logf("%d acknowledged appends survived SIGKILL; the store has %d events", len(got), len(all))
	// The store takes appends again.
	if _, err := s.Append(testCtx(t), "after-crash", domain.NoStream(), ev(0)); err != nil {
		t.Fatal(err)
	}
}

func crashChild(dir string) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s, err := Open(ctx, filepath.Join(dir, "events.db"))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for w := range 16 {
		wg.Go(func() {
			stream := fmt.Sprintf("crash-%d", w)
			var v uint64
			for i := 0; ctx.Err() == nil; i++ {
				res, err := s.Append(ctx, stream, domain.ExactVersion(v), ev(i), ev(i+1))
				if err != nil {
					fmt.Fprintln(os.Stderr, err)
					os.Exit(2)
				}
				v = res.Version
				mu.Lock()
				fmt.Fprintf(os.Stdout, "ack %s %d %d\n", stream, res.Version, res.Position)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	os.Exit(3)
}
