package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	nethttp "net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/usersync/usersync/domain"
	"github.com/usersync/usersync/funnelkit/simulator"
)

// The simulator's WordPress user and Application Password: it is a
// stand-in on loopback, so these are not secrets.
const (
	simUser     = "usersync-load"
	simPassword = "usersync-load app password"
)

// tagCount is the size of the simulator's and the seeder's tag catalogue
// (tags 1…tagCount, plus customerTag).
const (
	tagCount    = 50
	customerTag = 100
)

// contactEmail is contact c's address, the same in the simulator and in a
// seeded store, so that a server started on a seeded store finds its
// users' contacts in the simulator.
func contactEmail(c uint64) string { return fmt.Sprintf("c%d@example.com", c) }

func tagName(id uint64) string {
	if id == customerTag {
		return "Customer"
	}
	return fmt.Sprintf("Tag %d", id)
}

// contactTags is contact c's tag set after change k (k = 0 at first).
func contactTags(c, k uint64) []uint64 { return []uint64{(c+k)%tagCount + 1, customerTag} }

// world is what a run loads: a usersync (started here or not) and maybe
// a simulator started here.
type world struct {
	target     string
	accessKey  string
	adminToken string
	sim        *simulator.Simulator
	simURL     string
	serveLog   string
	closers    []func() error
	// failed keeps the serve log (set when something went wrong).
	failed bool
}

// startWorld starts the simulator and usersync that cfg asks for.
func startWorld(ctx context.Context, cfg *loadConfig, stderr io.Writer) (_ *world, err error) {
	w := &world{target: cfg.Target, accessKey: cfg.AccessKey, adminToken: cfg.AdminToken}
	defer func() {
		if err != nil {
			w.failed = true
			_ = w.close(stderr)
		}
	}()
	if cfg.Simulator {
		if err := w.startSimulator(cfg); err != nil {
			return nil, err
		}
		if cfg.Serve == "" {
			fmt.Fprintf(stderr, "usersync-load: FunnelKit simulator on %s (user %q, password %q, %d contacts from %d)\n",
				w.simURL, simUser, simPassword, cfg.Contacts, cfg.FirstContact)
		}
	}
	if cfg.Serve != "" {
		if err := w.startServe(ctx, cfg); err != nil {
			return nil, err
		}
	}
	return w, nil
}

// latencyHandler answers every request after d, as a FunnelKit site
// that takes d to answer.
func latencyHandler(d time.Duration, h nethttp.Handler) nethttp.Handler {
	if d <= 0 {
		return h
	}
	return nethttp.HandlerFunc(func(rw nethttp.ResponseWriter, r *nethttp.Request) {
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-t.C:
			h.ServeHTTP(rw, r)
		case <-r.Context().Done():
		}
	})
}

func (w *world) startSimulator(cfg *loadConfig) error {
	sim := simulator.New(simUser, simPassword)
	for id := uint64(1); id <= tagCount; id++ {
		sim.AddTag(id, tagName(id))
	}
	sim.AddTag(customerTag, tagName(customerTag))
	for c := uint64(cfg.FirstContact); c < uint64(cfg.FirstContact+cfg.Contacts); c++ {
		sim.PutContact(simulator.Contact{ID: domain.ContactID(c), Email: contactEmail(c), FirstName: "Load",
			LastName: fmt.Sprint(c), Country: "US", TagIDs: contactTags(c, 0)})
	}
	ln, err := net.Listen("tcp", cfg.SimulatorAddr)
	if err != nil {
		return fmt.Errorf("start the simulator: listen on --simulator-addr %s: %w", cfg.SimulatorAddr, err)
	}
	srv := &nethttp.Server{Handler: latencyHandler(cfg.CRMLatency, sim.Handler()), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	w.sim, w.simURL = sim, "http://"+ln.Addr().String()
	w.closers = append(w.closers, srv.Close)
	return nil
}

// changeTags moves a contact's tags in the simulator to their next set.
func (w *world) changeTags(contact, i uint64) {
	w.sim.SetContactTags(domain.ContactID(contact), contactTags(contact, i+1)...)
}

// startServe starts BINARY serve on a loopback port of its own choosing,
// pointed at the simulator, with fresh secrets passed in its environment
// (never on its command line), and waits until it listens.
func (w *world) startServe(ctx context.Context, cfg *loadConfig) error {
	var err error
	if w.accessKey == "" {
		if w.accessKey, err = randomToken(); err != nil {
			return err
		}
	}
	if w.adminToken == "" {
		if w.adminToken, err = randomToken(); err != nil {
			return err
		}
	}
	data := cfg.ServeData
	if data == "" {
		if data, err = os.MkdirTemp("", "usersync-load-data-"); err != nil {
			return fmt.Errorf("create a data directory for --serve: %w (or give one with --serve-data)", err)
		}
		w.closers = append(w.closers, func() error { return os.RemoveAll(data) })
	}
	var logFile *os.File
	if cfg.ServeLog != "" {
		logFile, err = os.Create(cfg.ServeLog)
	} else {
		logFile, err = os.CreateTemp("", "usersync-load-serve-*.log")
	}
	if err != nil {
		return fmt.Errorf("create usersync's log file: %w", err)
	}
	w.serveLog = logFile.Name()
	keepLog := cfg.ServeLog != ""
	args := append([]string{"serve", "--addr", "127.0.0.1:0", "--data", data, "--log-format", "json",
		"--funnelkit-url", w.simURL, "--funnelkit-user", simUser}, cfg.ServeFlags...)
	cmd := exec.Command(cfg.Serve, args...)
	cmd.Env = append(os.Environ(), "USERSYNC_ACCESS_KEY="+w.accessKey, "USERSYNC_ADMIN_TOKEN="+w.adminToken,
		"USERSYNC_FUNNELKIT_PASSWORD="+simPassword)
	cmd.Stdout = io.Discard
	dropLog := func() {
		logFile.Close()
		if !keepLog {
			_ = os.Remove(w.serveLog)
			w.serveLog = ""
		}
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		dropLog()
		return err
	}
	if err := cmd.Start(); err != nil {
		dropLog()
		return fmt.Errorf("start --serve %s: %w", cfg.Serve, err)
	}
	exited := make(chan struct{})
	var waitErr error
	addrCh := make(chan string, 1)
	var copied sync.WaitGroup
	copied.Add(1)
	go func() {
		defer copied.Done()
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		found := false
		for sc.Scan() {
			line := sc.Bytes()
			_, _ = logFile.Write(append(line, '\n'))
			if found {
				continue
			}
			var l struct {
				Msg  string `json:"msg"`
				Addr string `json:"addr"`
			}
			if json.Unmarshal(line, &l) == nil && l.Msg == "usersync is listening" && l.Addr != "" {
				found = true
				addrCh <- l.Addr
			}
		}
		_, _ = io.Copy(logFile, stderr)
	}()
	go func() {
		copied.Wait()
		waitErr = cmd.Wait()
		close(exited)
	}()
	w.closers = append(w.closers, func() error {
		select {
		case <-exited:
		default:
			_ = cmd.Process.Signal(syscall.SIGTERM)
			t := time.NewTimer(90 * time.Second)
			defer t.Stop()
			select {
			case <-exited:
			case <-t.C:
				_ = cmd.Process.Kill()
				<-exited
				w.failed = true
				return fmt.Errorf("usersync did not stop within 90 s of SIGTERM: killed")
			}
		}
		logFile.Close()
		if waitErr != nil {
			var ee *exec.ExitError
			if !errors.As(waitErr, &ee) || ee.ExitCode() != 0 {
				w.failed = true
				return fmt.Errorf("usersync exited with %v", waitErr)
			}
		}
		if !keepLog && !w.failed {
			_ = os.Remove(w.serveLog)
			w.serveLog = ""
		}
		return nil
	})
	t := time.NewTimer(cfg.ServeTimeout)
	defer t.Stop()
	select {
	case addr := <-addrCh:
		w.target = "http://" + addr
		return w.waitReady(ctx, t.C, exited)
	case <-exited:
		return fmt.Errorf("usersync exited before listening (%v):\n%s", waitErr, tail(w.serveLog, 15))
	case <-t.C:
		return fmt.Errorf("usersync did not listen within --serve-timeout %s (its log: %s)", cfg.ServeTimeout, w.serveLog)
	case <-ctx.Done():
		return ctx.Err()
	}
}

// waitReady waits until usersync's /readyz answers 200 (its views have
// caught up with the store), so that a run on a large store does not
// measure the catch-up.
func (w *world) waitReady(ctx context.Context, timeout <-chan time.Time, exited <-chan struct{}) error {
	client := &nethttp.Client{Transport: newTransport(1, false), Timeout: 5 * time.Second}
	defer client.CloseIdleConnections()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		req, err := nethttp.NewRequestWithContext(ctx, nethttp.MethodGet, w.target+"/readyz", nil)
		if err != nil {
			return err
		}
		if resp, err := client.Do(req); err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == nethttp.StatusOK {
				return nil
			}
		}
		select {
		case <-tick.C:
		case <-exited:
			return fmt.Errorf("usersync exited before it was ready:\n%s", tail(w.serveLog, 15))
		case <-timeout:
			return fmt.Errorf("usersync was not ready (GET /readyz) within --serve-timeout (its log: %s)", w.serveLog)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// close stops what startWorld started, usersync first.
func (w *world) close(stderr io.Writer) error {
	var errs []error
	for i := len(w.closers) - 1; i >= 0; i-- {
		errs = append(errs, w.closers[i]())
	}
	w.closers = nil
	if w.failed && w.serveLog != "" {
		fmt.Fprintf(stderr, "usersync-load: usersync's log is in %s\n", w.serveLog)
	}
	return errors.Join(errs...)
}

// tail is the last n lines of a file, for an error message.
func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func randomToken() (string, error) {
	b := make([]byte, 24)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("generate a token: %w", err)
	}
	return base64.RawURLEncoding.EncodeToString(b), nil
}
