package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	nethttp "net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/usersync/usersync/funnelkit"
)

// tmpfs mounts a small tmpfs of size bytes for the test, or skips it when
// it cannot (not root, no mount permission): CI runs as root.
func tmpfs(t *testing.T, size int) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a small tmpfs that fills up (CI runs as root)")
	}
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", fmt.Sprintf("size=%d", size), "tmpfs", dir).CombinedOutput(); err != nil {
		t.Skipf("cannot mount a tmpfs on %s: %v: %s", dir, err, out)
	}
	// Registered after TempDir's cleanup, so it runs before it.
	t.Cleanup(func() {
		if out, err := exec.Command("umount", "-l", dir).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", dir, err, out)
		}
	})
	return dir
}

func freeOn(t *testing.T, dir string) int64 {
	t.Helper()
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	return int64(st.Bavail) * int64(st.Bsize)
}

// fill writes a file under dir until the file system has at most leave
// bytes free (leave 0: until it is full). It returns the file's name.
func fill(t *testing.T, dir, name string, leave int64) string {
	t.Helper()
	path := filepath.Join(dir, name)
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	chunk := make([]byte, 64<<10)
	for range 1 << 14 { // bounded: 1 GiB at most
		free := freeOn(t, dir)
		if free <= leave {
			return path
		}
		n := min(int64(len(chunk)), free-leave)
		if _, err := f.Write(chunk[:n]); err != nil {
			if errors.Is(err, syscall.ENOSPC) {
				return path
			}
			t.Fatal(err)
		}
	}
	t.Fatalf("could not fill %s", dir)
	return ""
}

// proc is usersync serve running as its own process (the test binary
// re-executed, see TestMain).
type proc struct {
	cmd  *exec.Cmd
	addr string
	logs *syncBuffer
	done chan error
}

func startProc(t *testing.T, args ...string) *proc {
	t.Helper()
	raw, _ := json.Marshal(append([]string{"serve"}, args...))
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "USERSYNC_TEST_MAIN=1", "USERSYNC_TEST_ARGS="+string(raw))
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &proc{cmd: cmd, logs: &syncBuffer{}, done: make(chan error, 1)}
	addrCh := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			p.logs.Write(append(sc.Bytes(), '\n'))
			var line struct {
				Msg  string `json:"msg"`
				Addr string `json:"addr"`
			}
			if json.Unmarshal(sc.Bytes(), &line) == nil && line.Msg == "usersync is listening" {
				addrCh <- line.Addr
			}
		}
		p.done <- cmd.Wait()
	}()
	t.Cleanup(p.kill)
	select {
	case p.addr = <-addrCh:
	case err := <-p.done:
		t.Fatalf("usersync exited at start (%v):\n%s", err, p.logs.String())
	case <-time.After(waitDeadline):
		t.Fatalf("usersync did not start:\n%s", p.logs.String())
	}
	return p
}

// kill is kill -9, and waits for the process to be gone.
func (p *proc) kill() {
	if p.cmd.ProcessState != nil {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	select {
	case <-p.done:
	case <-time.After(waitDeadline):
	}
}

type reply struct {
	code int
	body map[string]any
	id   string
}

func (p *proc) get(t *testing.T, path string, auth bool) reply {
	t.Helper()
	req, err := nethttp.NewRequest("GET", "http://"+p.addr+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if auth {
		req.Header.Set("Authorization", "Bearer "+testToken)
	}
	resp, err := nethttp.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	r := reply{code: resp.StatusCode}
	_ = json.Unmarshal(b, &r.body)
	r.id, _ = r.body["webhook_id"].(string)
	return r
}

func (p *proc) webhook(t *testing.T, contact int, async bool) reply {
	t.Helper()
	q := url.Values{"wpf_action": {"add"}, "contact_id": {fmt.Sprint(contact)}, "access_key": {testKey}}
	if async {
		q.Set("async", "1")
	}
	return p.get(t, "/?"+q.Encode(), false)
}

// TestDisk_FullDisk is the disk proof: usersync on a 48 MiB tmpfs with a
// 16 MiB reserve. Below the reserve a new webhook is refused with 503 (never
// a 2xx for a webhook not recorded) and /readyz is 503, while the outcome of
// a webhook accepted before is still recorded; once space is freed it
// recovers without a restart; kill -9 while the disk is completely full
// loses no acknowledged webhook, and it starts cleanly once space is back.
func TestDisk_FullDisk(t *testing.T) {
	mnt := tmpfs(t, 48<<20)
	sim, simURL := newSim(t)
	data := filepath.Join(mnt, "data")
	args := []string{"--addr", "127.0.0.1:0", "--data", data,
		"--funnelkit-url", simURL, "--funnelkit-user", "automation", "--funnelkit-password", testFKPass,
		"--funnelkit-timeout", "1s", "--access-key", testKey, "--admin-token", testToken, "--log-format", "json",
		"--wait", "5s", "--retry-initial", "20ms", "--retry-max", "100ms", "--disk-reserve", "16MiB"}
	p := startProc(t, args...)
	contacts := []int{1, 2, 4, 5}
	var sent, acked, refused int
	var ackedIDs []string
	send := func(phase string, wantOK bool) {
		for i := range 10 {
			r := p.webhook(t, contacts[i%len(contacts)], false)
			sent++
			switch {
			case r.code >= 200 && r.code < 300:
				acked++
				ackedIDs = append(ackedIDs, r.id)
				if !wantOK {
					t.Errorf("%s: a webhook was answered %d (%v) while below the reserve", phase, r.code, r.body)
				}
			case r.code == nethttp.StatusServiceUnavailable:
				refused++
				if msg, _ := r.body["message"].(string); wantOK || !strings.Contains(msg, "--disk-reserve") || r.id != "" {
					t.Errorf("%s: answered 503 %v", phase, r.body)
				}
			default:
				t.Errorf("%s: answered %d %v", phase, r.code, r.body)
			}
		}
	}
	readyz := func() reply { return p.get(t, "/readyz", false) }

	// Room: every webhook is recorded and processed.
	send("room", true)
	if r := readyz(); r.code != 200 {
		t.Fatalf("readyz with room: %d %v", r.code, r.body)
	}
	// A webhook accepted while FunnelKit fails: it waits for a retry.
	sim.FailNext(funnelkit.EndpointContact, 1<<20, 503)
	pending := p.webhook(t, 1, true)
	sent++
	if pending.code != 202 {
		t.Fatalf("async webhook: %d %v", pending.code, pending.body)
	}
	acked++
	ackedIDs = append(ackedIDs, pending.id)
	// Below the reserve: refused, not ready; the accepted webhook still
	// gets its outcome recorded once FunnelKit is back.
	filler := fill(t, mnt, "filler", 8<<20)
	send("below reserve", false)
	if r := readyz(); r.code != 503 || !strings.Contains(fmt.Sprint(r.body["reason"]), "--disk-reserve") {
		t.Fatalf("readyz below the reserve: %d %v", r.code, r.body)
	}
	sim.ClearFaults()
	var last reply
	defer func() {
		if t.Failed() {
			t.Logf("last receipt %d %v\nlogs:\n%s", last.code, last.body, p.logs.String()[max(0, len(p.logs.String())-4000):])
		}
	}()
	eventually(t, "the accepted webhook to be processed below the reserve", func() bool {
		last = p.get(t, "/api/webhooks/"+pending.id, true)
		return last.code == 200 && last.body["status"] == "processed"
	})
	// Space back: ready again and recording, without a restart.
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	eventually(t, "readyz to turn ready once space is back", func() bool { return readyz().code == 200 })
	send("space back", true)
	// Completely full: refused, not ready, then kill -9.
	filler = fill(t, mnt, "filler", 0)
	send("full", false)
	if r := readyz(); r.code != 503 {
		t.Fatalf("readyz on a full disk: %d %v", r.code, r.body)
	}
	p.kill()
	// Space back, restart: it opens cleanly and has every acknowledged webhook.
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	p = startProc(t, args...)
	lost := 0
	for _, id := range ackedIDs {
		r := p.get(t, "/api/webhooks/"+id, true)
		if r.code != 200 {
			lost++
			t.Errorf("acknowledged webhook %s is gone after kill -9 on a full disk: %d %v", id, r.code, r.body)
		}
	}
	if r := readyz(); r.code != 200 {
		t.Errorf("readyz after the restart: %d %v", r.code, r.body)
	}
	t.Logf("disk proof: sent %d webhooks, acknowledged %d (2xx), refused %d (503), lost %d of the acknowledged", sent, acked, refused, lost)
	if strings.Contains(p.logs.String(), testKey) || strings.Contains(p.logs.String(), testToken) {
		t.Error("a secret is in the log")
	}
}
