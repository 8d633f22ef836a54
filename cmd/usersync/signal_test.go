package main

import (
	"bufio"
	"encoding/json"
	"io"
	nethttp "net/http"
	"net/url"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/usersync/usersync/funnelkit"
)

// TestMain lets a test run the real usersync process: the test binary
// re-executed with USERSYNC_TEST_MAIN set runs the command in
// USERSYNC_TEST_ARGS (JSON) with real signal handling.
func TestMain(m *testing.M) {
	if os.Getenv("USERSYNC_TEST_MAIN") == "1" {
		var args []string
		if err := json.Unmarshal([]byte(os.Getenv("USERSYNC_TEST_ARGS")), &args); err != nil {
			os.Exit(3)
		}
		os.Exit(runWithSignals(args))
	}
	os.Exit(m.Run())
}

func TestServe_SIGTERMDrainsInFlightWebhooksAndExitsZero(t *testing.T) {
	sim, simURL := newSim(t)
	dir := t.TempDir()
	args, _ := json.Marshal([]string{"serve", "--addr", "127.0.0.1:0", "--data", dir,
		"--funnelkit-url", simURL, "--funnelkit-user", "automation", "--funnelkit-password", testFKPass,
		"--funnelkit-timeout", "1s", "--access-key", testKey, "--admin-token", testToken, "--log-format", "json", "--wait", "10s"})
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "USERSYNC_TEST_MAIN=1", "USERSYNC_TEST_ARGS="+string(args))
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill() })
	logs := &syncBuffer{}
	addrCh := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			logs.Write(append(sc.Bytes(), '\n'))
			var line struct {
				Msg  string `json:"msg"`
				Addr string `json:"addr"`
			}
			if json.Unmarshal(sc.Bytes(), &line) == nil && line.Msg == "usersync is listening" {
				addrCh <- line.Addr
			}
		}
	}()
	var addr string
	select {
	case addr = <-addrCh:
	case <-time.After(waitDeadline):
		t.Fatalf("usersync did not start:\n%s", logs.String())
	}
	resp, err := nethttp.Get("http://" + addr + "/healthz")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("healthz: %v %v", resp, err)
	}
	resp.Body.Close()

	// A webhook is in flight (FunnelKit hangs) when SIGTERM arrives.
	sim.Hang(funnelkit.EndpointContact, 1)
	answer := make(chan int, 1)
	go func() {
		q := url.Values{"wpf_action": {"add"}, "contact_id": {"1"}, "access_key": {testKey}}
		resp, err := nethttp.Get("http://" + addr + "/?" + q.Encode())
		if err != nil {
			answer <- -1
			return
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		answer <- resp.StatusCode
	}()
	eventually(t, "the webhook to reach FunnelKit", func() bool { return sim.RequestsTo(funnelkit.EndpointContact) > 0 })
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case code := <-answer:
		// Recorded, FunnelKit timed out: kept for retry and answered, not cut off.
		if code != 202 {
			t.Fatalf("in-flight webhook answered %d during shutdown, want 202", code)
		}
	case <-time.After(waitDeadline):
		t.Fatal("the in-flight webhook got no answer")
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("usersync exited with %v after SIGTERM:\n%s", err, logs.String())
		}
	case <-time.After(waitDeadline):
		t.Fatal("usersync did not exit after SIGTERM")
	}
	if !strings.Contains(logs.String(), "shutting down") {
		t.Fatalf("no shutdown log line:\n%s", logs.String())
	}
	for _, secret := range []string{testKey, testToken, testFKPass} {
		if strings.Contains(logs.String(), secret) {
			t.Fatal("a secret is in the log")
		}
	}
}
