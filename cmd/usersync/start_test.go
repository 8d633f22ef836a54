package main

// First start as a new user meets it: generated secrets, the demo's data
// directory, rebuild and parked on a wrong --data, and errors in the
// environment.

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"io"
	"log/slog"
	"net"
	nethttp "net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// startServe parses args as usersync serve does and starts the real server;
// it returns what serve printed on stdout.
func startServe(t *testing.T, args ...string) (*app, string) {
	t.Helper()
	cfg, err := parseServe(args, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	a, err := startApp(context.Background(), cfg, slog.New(slog.NewTextHandler(io.Discard, nil)), &out)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = a.shutdown() })
	return a, out.String()
}

var (
	printedKey   = regexp.MustCompile(`Generated webhook access key \(shown once, stored only as a hash\): (\S+)`)
	printedToken = regexp.MustCompile(`Generated admin token for /api \(shown once, stored only as a hash\): (\S+)`)
)

// printed returns the access key and admin token a start printed.
func printed(t *testing.T, out string) (key, token string) {
	t.Helper()
	k, tok := printedKey.FindStringSubmatch(out), printedToken.FindStringSubmatch(out)
	if k == nil || tok == nil {
		t.Fatalf("no generated access key and admin token printed:\n%s", out)
	}
	return k[1], tok[1]
}

// webhookStatus sends an add webhook for contact with key and returns the
// HTTP status.
func webhookStatus(t *testing.T, addr, contact, key string) int {
	t.Helper()
	q := url.Values{"wpf_action": {"add"}, "contact_id": {contact}, "access_key": {key}}
	resp, err := nethttp.Get("http://" + addr + "/?" + q.Encode())
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode
}

// apiStatus GETs an /api path with token and returns the HTTP status.
func apiStatus(t *testing.T, addr, path, token string) int {
	t.Helper()
	req, err := nethttp.NewRequest("GET", "http://"+addr+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := nethttp.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode
}

// entries lists a directory's names (nil if it does not exist).
func entries(t *testing.T, dir string) []string {
	t.Helper()
	es, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range es {
		names = append(names, e.Name())
	}
	return names
}

// A first start that fails after the secrets were generated stores none of
// them: the next start generates and prints new ones, and they work.
func TestServe_FailedFirstStartKeepsNoUnshownSecrets(t *testing.T) {
	_, simURL := newSim(t)
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	dir := t.TempDir()
	base := []string{"serve", "--data", dir, "--funnelkit-user", "automation", "--funnelkit-password", testFKPass,
		"--password-field", passwordFld, "--log-format", "json"}
	failures := []struct {
		name, mention string
		args          []string
	}{
		{"port in use", "listen on --addr " + busy.Addr().String(), []string{"--addr", busy.Addr().String(), "--funnelkit-url", simURL}},
		{"metrics port in use", "listen on --metrics-addr", []string{"--addr", "127.0.0.1:0", "--metrics-addr", busy.Addr().String(), "--funnelkit-url", simURL}},
		{"bad FunnelKit URL", "--funnelkit-url", []string{"--addr", "127.0.0.1:0", "--funnelkit-url", "ftp://shop.example.com"}},
	}
	for _, f := range failures {
		var out, errb bytes.Buffer
		code := run(context.Background(), append(slices.Clone(base), f.args...), &out, &errb)
		if code != 1 || !strings.Contains(errb.String(), f.mention) {
			t.Fatalf("%s: exit %d, stderr %q; want 1 mentioning %q", f.name, code, errb.String(), f.mention)
		}
		if strings.Contains(out.String(), "Generated") {
			t.Fatalf("%s: a failed start printed secrets: %q", f.name, out.String())
		}
		if _, err := os.Stat(filepath.Join(dir, "credentials.json")); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("%s: credentials.json after a failed start: %v", f.name, err)
		}
	}

	a, out := startServe(t, append(slices.Clone(base[1:]), "--addr", "127.0.0.1:0", "--funnelkit-url", simURL)...)
	key, token := printed(t, out)
	if code := webhookStatus(t, a.addr, "1", key); code != nethttp.StatusOK {
		t.Fatalf("webhook with the printed key: %d", code)
	}
	if code := webhookStatus(t, a.addr, "1", key+"x"); code == nethttp.StatusOK {
		t.Fatalf("webhook with a wrong key: %d", code)
	}
	if code := apiStatus(t, a.addr, "/api/users/1", token); code != nethttp.StatusOK {
		t.Fatalf("/api with the printed token: %d", code)
	}
	if err := a.shutdown(); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(dir, "credentials.json"))
	if err != nil || bytes.Contains(b, []byte(key)) || bytes.Contains(b, []byte(token)) {
		t.Fatalf("credentials.json: %v, holds the plain secrets: %v", err, bytes.Contains(b, []byte(key)))
	}

	// The next start prints nothing and the printed key still works.
	a, out = startServe(t, append(slices.Clone(base[1:]), "--addr", "127.0.0.1:0", "--funnelkit-url", simURL)...)
	if strings.Contains(out, "Generated") {
		t.Fatalf("a later start printed secrets again: %q", out)
	}
	if code := webhookStatus(t, a.addr, "2", key); code != nethttp.StatusOK {
		t.Fatalf("webhook with the key after a restart: %d", code)
	}
}

// The demo without --data runs on a temporary directory that it names and
// removes; the current directory is left alone.
func TestServe_DemoWithoutDataUsesATemporaryDirectory(t *testing.T) {
	before := entries(t, ".")
	a, out := startServe(t, "--demo", "--addr", "127.0.0.1:0")
	m := regexp.MustCompile(`Demo data: (\S+) \(a temporary directory, removed when usersync stops`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("the demo does not say where its data is:\n%s", out)
	}
	dir := m[1]
	if !filepath.IsAbs(dir) || !slices.Contains(entries(t, dir), "events.db") || !slices.Contains(entries(t, dir), demoMarker) {
		t.Fatalf("demo data %s holds %v", dir, entries(t, dir))
	}
	key, token := printed(t, out)
	if !strings.Contains(out, "access_key="+key) || !strings.Contains(out, "Bearer "+token) {
		t.Fatalf("curl lines without the generated key and token:\n%s", out)
	}
	if code := webhookStatus(t, a.addr, "1", key); code != nethttp.StatusOK {
		t.Fatalf("demo webhook: %d", code)
	}
	if err := a.shutdown(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the demo's temporary directory is still there after the stop: %v", err)
	}
	if after := entries(t, "."); !slices.Equal(before, after) {
		t.Fatalf("the demo changed the current directory: %v, then %v", before, after)
	}
}

// A real server refuses a data directory the demo made, saying what to do,
// and touches nothing in it.
func TestServe_RefusesTheDemosDataDirectory(t *testing.T) {
	_, simURL := newSim(t)
	dir := filepath.Join(t.TempDir(), "demo-data")
	a, out := startServe(t, "--demo", "--addr", "127.0.0.1:0", "--data", dir)
	if !strings.Contains(out, "Demo data: "+dir+" (marked as the demo's") {
		t.Fatalf("the demo does not say where its data is:\n%s", out)
	}
	if err := a.shutdown(); err != nil {
		t.Fatal(err)
	}
	creds, err := os.ReadFile(filepath.Join(dir, "credentials.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := refuseDemoData(dir); !errors.Is(err, errDemoData) {
		t.Fatalf("refuseDemoData: %v", err)
	}
	real := []string{"serve", "--addr", "127.0.0.1:0", "--funnelkit-url", simURL,
		"--funnelkit-user", "automation", "--funnelkit-password", testFKPass, "--log-format", "json"}
	tests := []struct {
		name    string
		args    []string
		env     string
		mention []string
	}{
		{"flag", append(slices.Clone(real), "--data", dir), "", []string{"--data " + dir + " was made by usersync serve --demo", "own directory", "delete " + dir}},
		{"environment", real, dir, []string{"made by usersync serve --demo", `--data was set by USERSYNC_DATA="` + dir + `"`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.env != "" {
				t.Setenv("USERSYNC_DATA", tt.env)
			}
			var out, errb bytes.Buffer
			code := run(context.Background(), tt.args, &out, &errb)
			if code != 1 {
				t.Fatalf("exit %d, stderr %q", code, errb.String())
			}
			for _, m := range tt.mention {
				if !strings.Contains(errb.String(), m) {
					t.Errorf("stderr %q does not mention %q", errb.String(), m)
				}
			}
			if b, _ := os.ReadFile(filepath.Join(dir, "credentials.json")); !bytes.Equal(b, creds) {
				t.Fatal("the refused start changed credentials.json")
			}
		})
	}
}

// rebuild and parked refuse a --data that holds no usersync data, and
// create nothing there.
func TestRebuildAndParked_RefuseADirectoryWithoutData(t *testing.T) {
	root := t.TempDir()
	empty := filepath.Join(root, "empty")
	other := filepath.Join(root, "other")
	missing := filepath.Join(root, "missing")
	for _, d := range []string{empty, other} {
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(other, "views.db"), []byte("not ours"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		dir, mention string
	}{
		{empty, "--data " + empty + " holds no usersync data (no events.db)"},
		{other, "--data " + other + " holds no usersync data (no events.db)"},
		{missing, "--data " + missing + " does not exist"},
	}
	if _, err := existingData(other); !errors.Is(err, errNoData) {
		t.Fatalf("existingData: %v", err)
	}
	for _, cmd := range []string{"rebuild", "parked"} {
		for _, tt := range tests {
			for _, viaEnv := range []bool{false, true} {
				t.Run(cmd+"/"+filepath.Base(tt.dir)+map[bool]string{true: "/env"}[viaEnv], func(t *testing.T) {
					before := entries(t, tt.dir)
					args := []string{cmd, "--data", tt.dir}
					mention := tt.mention
					if viaEnv {
						t.Setenv("USERSYNC_DATA", tt.dir)
						args = args[:1]
					}
					var out, errb bytes.Buffer
					code := run(context.Background(), args, &out, &errb)
					if code != 1 || !strings.Contains(errb.String(), mention) || !strings.Contains(errb.String(), "usersync serve") {
						t.Fatalf("exit %d, stderr %q; want 1 mentioning %q", code, errb.String(), mention)
					}
					if viaEnv && !strings.Contains(errb.String(), `--data was set by USERSYNC_DATA="`+tt.dir+`"`) {
						t.Fatalf("stderr %q does not name USERSYNC_DATA", errb.String())
					}
					if out.Len() > 0 {
						t.Fatalf("stdout %q", out.String())
					}
					if after := entries(t, tt.dir); !slices.Equal(before, after) {
						t.Fatalf("%s created files: %v, then %v", cmd, before, after)
					}
				})
			}
		}
	}
}

// Every environment variable of every command: a bad value is refused with
// the variable, the value (unless it is a secret) and what it accepts.
func TestEnvironment_EveryVariableNamedInItsError(t *testing.T) {
	_, simURL := newSim(t)
	type row struct {
		bad     string // "" when no value of it can be refused at start
		accepts string // what the error must say beside the variable
		secret  bool   // the value must not be repeated
	}
	serve := map[string]row{
		"addr":                     {"8080", "is not host:port", false},
		"data":                     {" ", "--data is empty", false},
		"access-key":               {},
		"admin-token":              {},
		"funnelkit-url":            {"ftp://shop.example.com", "absolute http:// or https:// URL", true},
		"funnelkit-user":           {"a:b", "must not contain ':'", false},
		"funnelkit-password":       {"", "are required", true},
		"funnelkit-timeout":        {"15", "a duration such as", false},
		"password-field":           {},
		"password-return-attempts": {"ten", "a whole number", false},
		"default-role":             {"administrator", "administrator", false},
		"roles":                    {},
		"field-map":                {"first_name", "meta_key=funnelkit_field", false},
		"smtp-url":                 {"http://mail.example.com", "scheme must be smtp or smtps", true},
		"mail-from":                {"not an address", "--mail-from", false},
		"login-url":                {"ftp://x", "must be an http or https URL", false},
		"mail-attempts":            {"many", "a whole number", false},
		"wait":                     {"abc", "a duration such as", false},
		"retry-initial":            {"soon", "a duration such as", false},
		"retry-max":                {"later", "a duration such as", false},
		"concurrency":              {"1.5", "a whole number", false},
		"processing-concurrency":   {"0", "must be at least 1", false},
		"funnelkit-concurrency":    {"many", "a whole number", false},
		"contact-cache":            {"-5", "must be at least 1", false},
		"password-hash-cost":       {"32", "must be from 4 to 31", false},
		"password-hash-workers":    {"-1", "0 (one per CPU) or more", false},
		"log-format":               {"xml", "must be auto, text or json", false},
		"log-level":                {"loud", "must be debug, info, warn or error", false},
		"metrics-addr":             {"9464", "is not host:port", false},
		"pprof-addr":               {"0.0.0.0:6060", "is not a loopback host:port", false},
		"demo":                     {"yes", "true or false", false},
		"disk-reserve":             {"lots", "a size such as 64MiB", false},
		"auth-fail-rate":           {"fast", "a number such as", false},
		"auth-fail-burst":          {"many", "a whole number", false},
		"receipt-retention":        {"a month", "a duration such as", false},
		"takeover-after":           {"0s", "must be between 1s and 24h", false},
		"store":                    {"postgres://app:hunter2@db/usersync", "unknown scheme", true},
	}
	valid := map[string]string{
		"addr": "127.0.0.1:0", "data": t.TempDir(), "funnelkit-url": simURL,
		"funnelkit-user": "automation", "funnelkit-password": testFKPass, "log-format": "json",
	}
	fs, _ := serveFlags(io.Discard)
	fs.VisitAll(func(f *flag.Flag) {
		// Only this test's environment counts.
		t.Setenv(envName(f.Name), "")
		if err := os.Unsetenv(envName(f.Name)); err != nil {
			t.Fatal(err)
		}
		if _, ok := serve[f.Name]; !ok {
			t.Errorf("--%s (%s) has no row in this test", f.Name, envName(f.Name))
		}
	})
	setValid := func(t *testing.T) {
		for name, v := range valid {
			t.Setenv(envName(name), v)
		}
	}
	for name, r := range serve {
		variable := envName(name)
		t.Run("serve/"+variable, func(t *testing.T) {
			setValid(t)
			if r.bad == "" && !r.secret {
				// Free text: any value is taken as it is.
				t.Setenv(variable, "from the environment")
				cfg, err := parseServe(nil, io.Discard)
				if err != nil {
					t.Fatal(err)
				}
				if cfg.fromEnv[name] != "from the environment" {
					t.Fatalf("%s not taken from the environment: %v", variable, cfg.fromEnv)
				}
				return
			}
			t.Setenv(variable, r.bad)
			ctx, cancel := context.WithTimeout(context.Background(), waitDeadline)
			defer cancel()
			var out, errb bytes.Buffer
			code := run(ctx, []string{"serve"}, &out, &errb)
			msg := errb.String()
			if code != 1 || !strings.Contains(msg, variable) || !strings.Contains(msg, r.accepts) {
				t.Fatalf("%s=%q: exit %d, stderr %q; want 1 naming %s and %q", variable, r.bad, code, msg, variable, r.accepts)
			}
			if strings.Contains(msg, "parse error") {
				t.Fatalf("stderr %q still says only parse error", msg)
			}
			if r.secret && r.bad != "" && strings.Contains(msg, variable+"=") {
				t.Fatalf("stderr %q repeats the value of a secret", msg)
			}
			if !r.secret && r.bad != "" && !strings.Contains(msg, r.bad) && !strings.Contains(msg, "\""+strings.TrimSpace(r.bad)) {
				t.Fatalf("stderr %q does not show the value %q", msg, r.bad)
			}
		})
	}
	// rebuild and parked read USERSYNC_STORE as serve does, never
	// repeating it.
	for _, cmd := range []string{"rebuild", "parked"} {
		t.Run(cmd+"/USERSYNC_STORE", func(t *testing.T) {
			t.Setenv("USERSYNC_STORE", "postgres://app:hunter2@db/usersync")
			var out, errb bytes.Buffer
			code := run(context.Background(), []string{cmd, "--data", t.TempDir()}, &out, &errb)
			msg := errb.String()
			if code != 1 || !strings.Contains(msg, "--store was set by USERSYNC_STORE") || !strings.Contains(msg, "unknown scheme") || strings.Contains(msg, "hunter2") {
				t.Fatalf("exit %d, stderr %q; want 1 blaming USERSYNC_STORE without its password", code, msg)
			}
		})
	}
	// rebuild and parked read USERSYNC_DATA too.
	for _, cmd := range []string{"rebuild", "parked"} {
		t.Run(cmd+"/USERSYNC_DATA", func(t *testing.T) {
			dir := t.TempDir()
			t.Setenv("USERSYNC_DATA", dir)
			var out, errb bytes.Buffer
			code := run(context.Background(), []string{cmd}, &out, &errb)
			if want := `--data was set by USERSYNC_DATA="` + dir + `"`; code != 1 || !strings.Contains(errb.String(), want) || !strings.Contains(errb.String(), "events.db") {
				t.Fatalf("exit %d, stderr %q; want 1 mentioning %q", code, errb.String(), want)
			}
		})
	}
}

// The command line wins over the environment, and then the variable is not
// blamed for the flag's value.
func TestEnvironment_CommandLineOverrideIsNotBlamedOnTheVariable(t *testing.T) {
	t.Setenv("USERSYNC_WAIT", "3s")
	t.Setenv("USERSYNC_FUNNELKIT_URL", "https://shop.example.com")
	t.Setenv("USERSYNC_FUNNELKIT_USER", "automation")
	t.Setenv("USERSYNC_FUNNELKIT_PASSWORD", "abcd efgh")
	_, err := parseServe([]string{"--wait", "60s"}, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "--wait 1m0s must be between") || strings.Contains(err.Error(), "USERSYNC_WAIT") {
		t.Fatalf("err %v", err)
	}
}
