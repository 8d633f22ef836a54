package main

// The crash proof: the real usersync binary, killed with SIGKILL at random
// moments while webhooks stream in, restarted on the same data directory
// each time. At the end every webhook that was answered 2xx is in the
// store and was processed exactly once, no user, password or welcome email
// was made twice, and the views equal a fresh rebuild from the log.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	nethttp "net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/usersync/usersync/domain"
	"github.com/usersync/usersync/eventstore"
	"github.com/usersync/usersync/funnelkit/simulator"
	"github.com/usersync/usersync/projections"
)

const (
	crashSeed      = 9  // seeds the kill moments and the webhook stream
	crashKills     = 5  // SIGKILLs while webhooks stream in
	crashSenders   = 6  // concurrent FunnelKit automations
	crashPerSender = 40 // webhooks each sender sends
	crashFirstID   = 101
)

// crashContacts is how many contacts (101, 102, …, one address each) the
// webhooks are for, each becoming one user. Under -race a bcrypt hash takes
// seconds, so fewer users are made there; the webhooks are as many.
func crashContacts() int {
	if raceEnabled {
		return 8
	}
	return 24
}

// buildUsersync builds the real binary into a temporary directory, with
// -race when the tests run with it (the packages are then already built).
func buildUsersync(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "usersync")
	args := []string{"build", "-o", bin}
	if raceEnabled {
		args = append(args, "-race")
	}
	out, err := exec.Command("go", append(args, ".")...).CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// crashServer is the usersync process under test, restarted after each kill.
type crashServer struct {
	t    *testing.T
	bin  string
	args []string
	logs *syncBuffer

	mu      sync.Mutex
	cmd     *exec.Cmd
	exited  chan error
	base    string // "" while down
	gen     int
	changed chan struct{} // closed when base or gen change
}

func newCrashServer(t *testing.T, bin string, args []string) *crashServer {
	s := &crashServer{t: t, bin: bin, args: args, logs: &syncBuffer{}, changed: make(chan struct{})}
	t.Cleanup(func() {
		s.mu.Lock()
		cmd, exited := s.cmd, s.exited
		s.mu.Unlock()
		if cmd != nil {
			_ = cmd.Process.Kill()
			<-exited
		}
	})
	return s
}

// start runs the binary and returns once it listens.
func (s *crashServer) start() {
	s.t.Helper()
	cmd := exec.Command(s.bin, s.args...)
	cmd.Stdout = s.logs
	stderr, err := cmd.StderrPipe()
	if err != nil {
		s.t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		s.t.Fatal(err)
	}
	exited := make(chan error, 1)
	addrCh := make(chan string, 1)
	scanned := make(chan struct{})
	go func() {
		defer close(scanned)
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			s.logs.Write(append(sc.Bytes(), '\n'))
			var line struct {
				Msg  string `json:"msg"`
				Addr string `json:"addr"`
			}
			if json.Unmarshal(sc.Bytes(), &line) == nil && line.Msg == "usersync is listening" {
				addrCh <- line.Addr
			}
		}
	}()
	go func() {
		<-scanned // Wait closes the pipe: read it to the end first
		exited <- cmd.Wait()
	}()
	s.mu.Lock()
	s.cmd, s.exited = cmd, exited
	s.mu.Unlock()
	select {
	case addr := <-addrCh:
		s.set("http://" + addr)
	case err := <-exited:
		s.mu.Lock()
		s.cmd = nil
		s.mu.Unlock()
		s.t.Fatalf("usersync exited before listening: %v\n%s", err, s.logs.String())
	case <-time.After(waitDeadline):
		s.t.Fatalf("usersync did not start listening within %s:\n%s", waitDeadline, s.logs.String())
	}
}

func (s *crashServer) set(base string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.base = base
	if base != "" {
		s.gen++
	}
	close(s.changed)
	s.changed = make(chan struct{})
}

// current is the base URL ("" while down), the process generation, and a
// channel closed at the next change.
func (s *crashServer) current() (string, int, <-chan struct{}) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.base, s.gen, s.changed
}

// upAfter waits until a process newer than gen listens; false at the deadline.
func (s *crashServer) upAfter(gen int, deadline time.Time) (string, int, bool) {
	for {
		base, g, changed := s.current()
		if base != "" && g > gen {
			return base, g, true
		}
		select {
		case <-changed:
		case <-time.After(time.Until(deadline)):
			return "", 0, false
		}
	}
}

// signal sends sig (such as SIGSTOP or SIGCONT) to the running process
// without waiting for anything.
func (s *crashServer) signal(sig syscall.Signal) {
	s.t.Helper()
	s.mu.Lock()
	cmd := s.cmd
	s.mu.Unlock()
	if cmd == nil {
		s.t.Fatalf("signal %v: the process is not running", sig)
	}
	if err := cmd.Process.Signal(sig); err != nil {
		s.t.Fatal(err)
	}
}

// stop sends sig and waits for the process to exit.
func (s *crashServer) stop(sig syscall.Signal) error {
	s.t.Helper()
	s.set("")
	s.mu.Lock()
	cmd, exited := s.cmd, s.exited
	s.cmd = nil
	s.mu.Unlock()
	if err := cmd.Process.Signal(sig); err != nil {
		s.t.Fatal(err)
	}
	select {
	case err := <-exited:
		return err
	case <-time.After(2 * waitDeadline):
		_ = cmd.Process.Kill()
		s.t.Fatalf("usersync did not exit after %v:\n%s", sig, s.logs.String())
		return nil
	}
}

// crashAnswer is what a sender got for one webhook.
type crashAnswer struct {
	action  string
	contact domain.ContactID
	code    int
	id      string
	status  string
}

// sendHook sends one webhook like FunnelKit (how: get, form or json).
func sendHook(client *nethttp.Client, base, how string, params map[string]string) (int, answer, error) {
	q := url.Values{}
	for k, v := range params {
		q.Set(k, v)
	}
	var req *nethttp.Request
	var err error
	switch how {
	case "get":
		req, err = nethttp.NewRequest("GET", base+"/?"+q.Encode(), nil)
	case "form":
		req, err = nethttp.NewRequest("POST", base+"/", strings.NewReader(q.Encode()))
		if err == nil {
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		}
	default:
		b, _ := json.Marshal(params)
		req, err = nethttp.NewRequest("POST", base+"/", bytes.NewReader(b))
		if err == nil {
			req.Header.Set("Content-Type", "application/json")
		}
	}
	if err != nil {
		return 0, answer{}, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, answer{}, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, answer{}, err // cut off by the kill
	}
	var a answer
	if err := json.Unmarshal(body, &a); err != nil {
		return resp.StatusCode, answer{}, fmt.Errorf("answer %d is not JSON: %s", resp.StatusCode, body)
	}
	return resp.StatusCode, a, nil
}

func TestCrash_SIGKILLUnderLoad_NothingLostNothingTwice(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and kills the real binary")
	}
	began := time.Now()
	bin := buildUsersync(t)
	built := time.Since(began)

	sim := simulator.New("automation", testFKPass)
	sim.SampleData()
	for i := range crashContacts() {
		id := domain.ContactID(crashFirstID + i)
		sim.PutContact(simulator.Contact{ID: id, Email: fmt.Sprintf("c%d@example.com", id), FirstName: fmt.Sprintf("C%d", id),
			Fields: map[string]string{"7": "gold"}, TagIDs: []uint64{uint64(1 + i%3)}})
	}
	simURL, stopSim := sim.Start()
	t.Cleanup(stopSim)

	dir := t.TempDir()
	srv := newCrashServer(t, bin, []string{"serve", "--addr", "127.0.0.1:0", "--data", dir,
		"--funnelkit-url", simURL, "--funnelkit-user", "automation", "--funnelkit-password", testFKPass,
		"--funnelkit-timeout", "2s", "--access-key", testKey, "--admin-token", testToken,
		"--password-field", passwordFld, "--log-format", "json", "--log-level", "info",
		"--wait", "1s", "--retry-initial", "5ms", "--retry-max", "50ms", "--concurrency", "8"})
	srv.start()

	// The senders: adds (with the welcome email), updates and update_tags
	// for random contacts, sync and async, over every transport.
	var (
		acked   atomic.Int64
		sent    atomic.Int64
		mu      sync.Mutex
		answers []crashAnswer
		wg      sync.WaitGroup
		done    = make(chan struct{})
	)
	client := &nethttp.Client{Timeout: 15 * time.Second, Transport: &nethttp.Transport{DisableKeepAlives: true}}
	for i := range crashSenders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(crashSeed, uint64(i)))
			deadline := time.Now().Add(25 * time.Second)
			for n := 0; n < crashPerSender && time.Now().Before(deadline); n++ {
				contact := domain.ContactID(crashFirstID + r.IntN(crashContacts()))
				action := []string{"add", "add", "update", "update_tags", "update_tags"}[r.IntN(5)]
				params := map[string]string{"wpf_action": action, "contact_id": strconv.FormatUint(uint64(contact), 10), "access_key": testKey}
				switch action {
				case "add":
					params["send_notification"] = "1"
				case "update_tags":
					sim.SetContactTags(contact, uint64(1+r.IntN(3)), uint64(1+r.IntN(3)))
				case "update":
					sim.SetField(contact, "7", []string{"gold", "silver", "bronze"}[r.IntN(3)])
				}
				if r.IntN(2) == 0 {
					params["async"] = "1"
				}
				base, gen, _ := srv.current()
				if base == "" {
					var ok bool
					if base, gen, ok = srv.upAfter(gen, deadline); !ok {
						return
					}
				}
				sent.Add(1)
				code, a, err := sendHook(client, base, []string{"get", "form", "json"}[r.IntN(3)], params)
				if err != nil || code < 200 || code > 299 {
					// Killed under the request (or not up yet): FunnelKit
					// would retry; this sender sends its next one once a
					// new process listens.
					mu.Lock()
					answers = append(answers, crashAnswer{action: action, contact: contact, code: code})
					mu.Unlock()
					if err != nil {
						if _, _, ok := srv.upAfter(gen, deadline); !ok {
							return
						}
					}
					continue
				}
				acked.Add(1)
				mu.Lock()
				answers = append(answers, crashAnswer{action: action, contact: contact, code: code, id: a.WebhookID, status: a.Status})
				mu.Unlock()
			}
		}()
	}
	go func() { wg.Wait(); close(done) }()

	// The killer: SIGKILL after a random number of further answers, then
	// start again on the same data directory.
	r := rand.New(rand.NewPCG(crashSeed, 1000))
	kills := 0
	var restarts time.Duration
	for kills < crashKills {
		target := acked.Load() + int64(10+r.IntN(35))
		deadline := time.Now().Add(waitDeadline)
		finished := false
		tick := time.NewTicker(time.Millisecond)
		for acked.Load() < target && !finished {
			select {
			case <-done:
				finished = true
			case <-tick.C:
			}
			if time.Now().After(deadline) {
				t.Fatalf("no progress: %d answers, waiting for %d\n%s", acked.Load(), target, srv.logs.String())
			}
		}
		tick.Stop()
		if finished {
			break
		}
		if err := srv.stop(syscall.SIGKILL); err == nil {
			t.Fatal("usersync exited cleanly on SIGKILL")
		}
		kills++
		restarted := time.Now()
		srv.start()
		restarts += time.Since(restarted)
	}
	select {
	case <-done:
	case <-time.After(40 * time.Second):
		t.Fatal("the senders did not finish")
	}

	streamed := time.Since(began) - built
	// Drain: nothing open, every view and process manager at the head, no
	// password waiting to be returned.
	base, _, _ := srv.current()
	addr := strings.TrimPrefix(base, "http://")
	drainDeadline := time.Now().Add(20 * time.Second)
	drainTick := time.NewTicker(5 * time.Millisecond)
	defer drainTick.Stop()
	for {
		fams, _ := scrape(t, addr)
		if fams["usersync_webhooks_open"].get(nil) == 0 && fams["usersync_projection_lag_events"].get(nil) == 0 &&
			fams["usersync_password_returns"].get(map[string]string{"status": "pending"}) == 0 {
			break
		}
		if time.Now().After(drainDeadline) {
			t.Fatalf("usersync did not drain: open %v, lag %v, pending %v",
				fams["usersync_webhooks_open"].get(nil), fams["usersync_projection_lag_events"].get(nil),
				fams["usersync_password_returns"].get(map[string]string{"status": "pending"}))
		}
		<-drainTick.C
	}
	drained := time.Since(began) - built - streamed
	if err := srv.stop(syscall.SIGTERM); err != nil {
		t.Fatalf("usersync exited with %v after SIGTERM:\n%s", err, srv.logs.String())
	}

	ctx := context.Background()
	log := readLog(t, filepath.Join(dir, "events.db"))
	lost, twice := 0, 0
	for _, a := range answers {
		if a.id == "" {
			continue
		}
		if _, ok := log.received[a.id]; !ok {
			lost++
			t.Errorf("webhook %s (%s %d) was answered %d and is not in the store", a.id, a.action, a.contact, a.code)
			continue
		}
		if a.status == "processed" && log.outcomeType[a.id] != domain.TypeWebhookProcessed {
			t.Errorf("webhook %s was answered processed, its outcome is %s", a.id, log.outcomeType[a.id])
		}
	}
	for id := range log.received {
		if n := log.outcomes[id]; n != 1 {
			twice++
			t.Errorf("webhook %s has %d outcomes, want exactly 1", id, n)
		}
	}
	for id := range log.outcomes {
		if _, ok := log.received[id]; !ok {
			t.Errorf("outcome for webhook %s, which was never received", id)
		}
	}
	for _, reason := range log.failed {
		t.Errorf("a webhook failed: %s", reason)
	}
	welcome := 0
	for c, n := range log.created {
		if n != 1 || log.issued[c] != 1 {
			t.Errorf("contact %d: %d UserCreated, %d PasswordIssued; want 1 and 1", c, n, log.issued[c])
		}
		if log.welcomeWanted[c] {
			welcome++
			if log.welcomeSent[c] != 1 {
				t.Errorf("contact %d: %d WelcomeEmailSent, want 1", c, log.welcomeSent[c])
			}
		}
	}
	for email, n := range log.emails {
		if n != 1 {
			t.Errorf("%d users were created for %s", n, email)
		}
	}
	for key, n := range log.returned {
		if n != 1 {
			t.Errorf("password %s: %d PasswordReturned, want 1", key, n)
		}
	}
	if len(log.returned) != len(log.created) {
		t.Errorf("%d passwords returned for %d users", len(log.returned), len(log.created))
	}
	mails, leftovers := outboxRecipients(t, filepath.Join(dir, "outbox"))
	// A kill between writing the mail and recording WelcomeEmailSent sends
	// it again on restart, under the same Message-ID and file name: the
	// outbox still holds one mail per user.
	total := 0
	for to, n := range mails {
		total += n
		if n != 1 {
			t.Errorf("%d welcome emails to %s in the outbox, want 1", n, to)
		}
	}
	if len(mails) != welcome {
		t.Errorf("welcome emails in the outbox to %d addresses for %d users who asked for one", len(mails), welcome)
	}

	// The views the process left equal a fresh rebuild of a copy.
	rebuilt := t.TempDir()
	copyData(t, dir, rebuilt)
	if out, err := exec.Command(bin, "rebuild", "--data", rebuilt, "--progress", "off").CombinedOutput(); err != nil {
		t.Fatalf("usersync rebuild: %v\n%s", err, out)
	}
	live, fresh := viewContent(ctx, t, dir), viewContent(ctx, t, rebuilt)
	if !reflect.DeepEqual(live, fresh) {
		t.Errorf("the views differ from a fresh rebuild:\nlive  %+v\nfresh %+v", live, fresh)
	}
	if len(live.Users) != len(log.created) {
		t.Errorf("%d users in the view, %d created in the log", len(live.Users), len(log.created))
	}
	t.Logf("crash proof (seed %d): %d webhooks sent, %d acknowledged (2xx), %d lost, %d processed twice, %d SIGKILLs; "+
		"%d recorded, %d users, %d passwords returned (%d field writes to FunnelKit), %d welcome emails (%d temporary files left in the outbox); %d events; "+
		"build %s, stream %s (restarts %s), drain %s, total %s",
		crashSeed, sent.Load(), acked.Load(), lost, twice, kills, len(log.received), len(log.created), len(log.returned),
		len(sim.FieldWrites()), total, leftovers, log.events, built.Round(time.Millisecond), streamed.Round(time.Millisecond),
		restarts.Round(time.Millisecond), drained.Round(time.Millisecond), time.Since(began).Round(time.Millisecond))
	if kills < 4 {
		t.Errorf("only %d kills happened before the senders finished, want at least 4", kills)
	}
}

// crashLog is what the event log says about the webhooks and their effects.
type crashLog struct {
	events        int
	received      map[string]string // webhook id → stream
	outcomes      map[string]int    // webhook id → outcome events
	outcomeType   map[string]string
	failed        []string
	created       map[domain.ContactID]int
	emails        map[string]int
	issued        map[domain.ContactID]int
	welcomeWanted map[domain.ContactID]bool
	welcomeSent   map[domain.ContactID]int
	returned      map[string]int // key id → PasswordReturned
	returnedFor   map[domain.ContactID]int
	replaced      map[domain.ContactID]int    // PasswordReplaced (a node replaced a password it could not unseal)
	passwordHash  map[domain.ContactID]string // the user's password hash now
}

// readLog opens the stopped process's store and reads every event.
func readLog(t *testing.T, path string) crashLog {
	t.Helper()
	ctx := context.Background()
	store, err := eventstore.Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	return scanLog(t, store)
}

// scanLog reads every event of a store.
func scanLog(t *testing.T, store interface {
	ReadAll(ctx context.Context, after uint64, limit int) ([]domain.RecordedEvent, error)
}) crashLog {
	t.Helper()
	ctx := context.Background()
	l := crashLog{received: map[string]string{}, outcomes: map[string]int{}, outcomeType: map[string]string{},
		created: map[domain.ContactID]int{}, emails: map[string]int{}, issued: map[domain.ContactID]int{},
		welcomeWanted: map[domain.ContactID]bool{}, welcomeSent: map[domain.ContactID]int{}, returned: map[string]int{},
		returnedFor: map[domain.ContactID]int{}, replaced: map[domain.ContactID]int{}, passwordHash: map[domain.ContactID]string{}}
	outcome := func(id, typ string) {
		l.outcomes[id]++
		l.outcomeType[id] = typ
	}
	var after uint64
	for range 1000 {
		recs, err := store.ReadAll(ctx, after, 5000)
		if err != nil {
			t.Fatal(err)
		}
		if len(recs) == 0 {
			return l
		}
		for _, rec := range recs {
			after = rec.Position
			l.events++
			env, err := domain.Decode(rec)
			if err != nil {
				t.Fatalf("event %d: %v", rec.Position, err)
			}
			contact, _ := domain.ContactIDFromStream(rec.Stream)
			switch e := env.Event.(type) {
			case domain.WebhookReceived:
				if _, dup := l.received[e.WebhookID]; dup {
					t.Errorf("webhook %s received twice", e.WebhookID)
				}
				l.received[e.WebhookID] = rec.Stream
			case domain.WebhookProcessed:
				outcome(e.WebhookID, rec.Type)
			case domain.WebhookIgnored:
				outcome(e.WebhookID, rec.Type)
			case domain.WebhookFailed:
				outcome(e.WebhookID, rec.Type)
				l.failed = append(l.failed, fmt.Sprintf("%s %s: %s", e.WebhookID, e.Action, e.Reason))
			case domain.UserCreated:
				l.created[contact]++
				l.emails[e.Email]++
				l.welcomeWanted[contact] = e.WelcomeEmail
				l.passwordHash[contact] = e.PasswordHash
			case domain.PasswordReplaced:
				l.replaced[contact]++
				l.passwordHash[contact] = e.PasswordHash
			case domain.PasswordIssued:
				l.issued[contact]++
			case domain.PasswordReturned:
				l.returned[e.KeyID]++
				l.returnedFor[contact]++
			case domain.WelcomeEmailSent:
				l.welcomeSent[contact]++
			}
		}
	}
	t.Fatal("the log did not end within 1000 pages")
	return l
}

// outboxRecipients counts the .eml files in the outbox by their To header,
// and the temporary files a kill left behind (.tmp-*, never renamed into
// place, so never a sent mail).
func outboxRecipients(t *testing.T, dir string) (map[string]int, int) {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(dir, "*.eml"))
	if err != nil {
		t.Fatal(err)
	}
	out, leftovers := map[string]int{}, 0
	for _, f := range files {
		if strings.HasPrefix(filepath.Base(f), ".") {
			leftovers++
			continue
		}
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		to := ""
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "To: "); ok {
				to = strings.TrimSpace(v)
				break
			}
		}
		if to == "" {
			t.Fatalf("%s has no To header", f)
		}
		out[to]++
	}
	return out, leftovers
}

// copyData copies the files of a stopped data directory.
func copyData(t *testing.T, from, to string) {
	t.Helper()
	entries, err := os.ReadDir(from)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if !e.Type().IsRegular() {
			continue
		}
		b, err := os.ReadFile(filepath.Join(from, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(to, e.Name()), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

// views is the content of every view of a data directory.
type views struct {
	Users     []projections.User
	Tags      []projections.Tag
	Passwords []projections.PasswordReturn
	Webhooks  []projections.Webhook
}

func viewContent(ctx context.Context, t *testing.T, dir string) views {
	t.Helper()
	v, err := projections.Open(ctx, filepath.Join(dir, "views.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	var out views
	var errs [4]error
	out.Users, errs[0] = v.Users.All(ctx)
	out.Tags, errs[1] = v.Tags.List(ctx)
	out.Passwords, errs[2] = v.Passwords.List(ctx, "")
	out.Webhooks, errs[3] = v.Webhooks.All(ctx)
	if err := errors.Join(errs[:]...); err != nil {
		t.Fatal(err)
	}
	return out
}
