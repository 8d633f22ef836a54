package main

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/usersync/usersync/domain"
	"github.com/usersync/usersync/domain/command"
	"github.com/usersync/usersync/eventstore/keystore"
	"github.com/usersync/usersync/eventstore/pipeline"
	usershttp "github.com/usersync/usersync/http"
)

// serveConfig is every flag of usersync serve.
type serveConfig struct {
	Addr              string
	Data              string
	Store             string
	AccessKey         string
	AdminToken        string
	FunnelKitURL      string
	FunnelKitUser     string
	FunnelKitPassword string
	PasswordField     string
	DefaultRole       string
	Roles             string
	FieldMap          string
	SMTPURL           string
	MailFrom          string
	LoginURL          string
	Wait              time.Duration
	Demo              bool
	RetryInitial      time.Duration
	RetryMax          time.Duration
	ReturnAttempts    int
	MailAttempts      int
	Concurrency       int
	LogFormat         string
	LogLevel          string
	MetricsAddr       string
	PprofAddr         string
	FunnelKitTimeout  time.Duration
	TakeoverAfter     time.Duration
	DiskReserve       byteSize
	AuthFailRate      float64
	AuthFailBurst     int
	ReceiptRetention  time.Duration

	// Processing of webhooks (issue 10): contacts at once, FunnelKit
	// reads at once, contacts' states kept, the password hash.
	ProcessingConcurrency int
	FunnelKitConcurrency  int
	ContactCache          int
	PasswordHashCost      int
	PasswordHashWorkers   int

	// tempData is set by parseServe for --demo without --data (flag or
	// USERSYNC_DATA): the demo then runs on a new temporary directory.
	tempData bool
	// fromEnv holds the flags whose value came from the environment (the
	// command line did not override them), to name the variable in errors.
	fromEnv map[string]string
	// wrapViews, set by tests only, wraps the views' pipeline consumers
	// (to hold their catch-up).
	wrapViews func(pipeline.BatchConsumer) pipeline.BatchConsumer
	// catchUpMinBehind, set by tests only, replaces
	// projections.DefaultCatchUpMinBehind: how far behind the views must be
	// at the start to be built aside.
	catchUpMinBehind uint64
}

// envName is the environment variable that sets a flag.
func envName(flagName string) string {
	return "USERSYNC_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

func serveFlags(stderr io.Writer) (*flag.FlagSet, *serveConfig) {
	c := &serveConfig{}
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&c.Addr, "addr", "127.0.0.1:8080", "listen address")
	fs.StringVar(&c.Data, "data", "./data", "data directory (event store, keys, views, mail outbox); --demo without --data uses a temporary directory, removed on exit")
	fs.StringVar(&c.Store, "store", "", "event store: empty or file (the embedded store, events.db under --data), or an EventStoreDB connection string esdb://host:2113?tls=false or esdb+discover://… (--data still holds the views, keys and outbox)")
	fs.StringVar(&c.AccessKey, "access-key", "", "webhook access key (default: generated on first start, printed once, stored as a hash)")
	fs.StringVar(&c.AdminToken, "admin-token", "", "bearer token for /api/* (default: generated like the access key)")
	fs.StringVar(&c.FunnelKitURL, "funnelkit-url", "", "FunnelKit site base URL, e.g. https://shop.example.com (required unless --demo)")
	fs.StringVar(&c.FunnelKitUser, "funnelkit-user", "", "WordPress user name for the Application Password")
	fs.StringVar(&c.FunnelKitPassword, "funnelkit-password", "", "WordPress Application Password (HTTP Basic)")
	fs.StringVar(&c.PasswordField, "password-field", "", "FunnelKit custom field id that receives a generated password; empty turns password return off")
	fs.StringVar(&c.DefaultRole, "default-role", "subscriber", "role of new users")
	fs.StringVar(&c.Roles, "roles", "subscriber", "comma list of roles a webhook may grant (administrator is always refused)")
	fs.StringVar(&c.FieldMap, "field-map", "", "comma list meta_key=funnelkit_field added to the default map")
	fs.StringVar(&c.SMTPURL, "smtp-url", "", "SMTP server for the welcome email, smtp://user:pass@host:port (default: write .eml files to DATA/outbox)")
	fs.StringVar(&c.MailFrom, "mail-from", "usersync@localhost", "sender address of the welcome email")
	fs.StringVar(&c.LoginURL, "login-url", "", "login link in the welcome email")
	fs.DurationVar(&c.Wait, "wait", 10*time.Second, "how long a webhook answer waits for processing before answering 202")
	fs.BoolVar(&c.Demo, "demo", false, "run against an in-process FunnelKit simulator with sample contacts and print ready-to-paste curl lines")
	fs.DurationVar(&c.RetryInitial, "retry-initial", 500*time.Millisecond, "first retry delay when FunnelKit or SMTP fails (doubles each time)")
	fs.DurationVar(&c.RetryMax, "retry-max", 5*time.Minute, "longest retry delay")
	fs.IntVar(&c.ReturnAttempts, "password-return-attempts", 10, "password return attempts before giving up (the password is then destroyed)")
	fs.IntVar(&c.MailAttempts, "mail-attempts", 10, "welcome email attempts before giving up")
	fs.IntVar(&c.Concurrency, "concurrency", 8, "the most passwords being returned to FunnelKit at once")
	fs.IntVar(&c.ProcessingConcurrency, "processing-concurrency", 64, "contacts whose webhooks are processed at once (one contact's webhooks always in order, its queued ones decided together)")
	fs.IntVar(&c.FunnelKitConcurrency, "funnelkit-concurrency", command.DefaultCRMConcurrency, "the most FunnelKit reads webhook processing makes at once")
	fs.IntVar(&c.ContactCache, "contact-cache", command.DefaultContactCache, "contacts whose state is kept in memory, so that a webhook reads only the events after it")
	fs.IntVar(&c.PasswordHashCost, "password-hash-cost", keystore.DefaultHashCost, "bcrypt cost of new users' password hashes, 4 to 31 (each step doubles the CPU of every new user)")
	fs.IntVar(&c.PasswordHashWorkers, "password-hash-workers", 0, "password hashes made at once (0: one per CPU)")
	fs.StringVar(&c.LogFormat, "log-format", "auto", "log format: text, json, or auto (text on a terminal, else json)")
	fs.StringVar(&c.LogLevel, "log-level", "info", "log level: debug, info, warn, error")
	fs.StringVar(&c.MetricsAddr, "metrics-addr", "", "also serve /metrics on this address (it is always on --addr)")
	fs.StringVar(&c.PprofAddr, "pprof-addr", "", "serve Go's profiler (/debug/pprof/) on this loopback address, for measurements; off by default")
	fs.DurationVar(&c.FunnelKitTimeout, "funnelkit-timeout", 15*time.Second, "timeout of each FunnelKit request")
	fs.DurationVar(&c.TakeoverAfter, "takeover-after", command.DefaultTakeoverAfter, "with several nodes on one store: how long after the issuing node's last sign of life another node replaces a generated password it cannot unseal, and how long a contact's oldest open webhook may wait before any node takes the contact up from a stuck one (1s to 24h)")
	c.DiskReserve = 64 << 20
	fs.Var(&c.DiskReserve, "disk-reserve", "free space kept on the data disk: below it new webhooks are refused with 503 (FunnelKit sends them again) and /readyz is not ready; 0 turns it off")
	fs.Float64Var(&c.AuthFailRate, "auth-fail-rate", 1, "wrong access keys or admin tokens per second a source address may keep making after --auth-fail-burst (then 429); 0 turns throttling off")
	fs.IntVar(&c.AuthFailBurst, "auth-fail-burst", 10, "wrong access keys or admin tokens in a row a source address may make before it is throttled")
	fs.DurationVar(&c.ReceiptRetention, "receipt-retention", defaultReceiptRetention, "how long the webhooks view keeps a closed webhook's receipt (older ones are answered from the log); 0 keeps every receipt")
	return fs, c
}

// defaultReceiptRetention is --receipt-retention's default: 30 days.
const defaultReceiptRetention = 30 * 24 * time.Hour

// parseServe reads flags from the environment (USERSYNC_<NAME>) and then
// the command line, which wins, and validates them.
func parseServe(args []string, stderr io.Writer) (*serveConfig, error) {
	fs, c := serveFlags(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: usersync serve [flags]\n\nEvery flag can also be set as USERSYNC_<NAME> (upper case, dashes to underscores);\nthe command line wins. See docs/configuration.md.\n\n")
		fs.PrintDefaults()
	}
	var envErr error
	fromEnv, setByEnv := map[string]string{}, map[string]string{}
	fs.VisitAll(func(f *flag.Flag) {
		if v, ok := os.LookupEnv(envName(f.Name)); ok && envErr == nil {
			if err := fs.Set(f.Name, v); err != nil {
				envErr = newEnvError(f, v)
			}
			fromEnv[f.Name], setByEnv[f.Name] = v, f.Value.String()
		}
	})
	if envErr != nil {
		return nil, envErr
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil, flag.ErrHelp
		}
		return nil, errUsage
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q (flags start with --)", fs.Arg(0))
	}
	for name, v := range setByEnv {
		if fs.Lookup(name).Value.String() != v {
			delete(fromEnv, name) // the command line set it
		}
	}
	c.fromEnv = fromEnv
	dataGiven := false
	fs.Visit(func(f *flag.Flag) { dataGiven = dataGiven || f.Name == "data" })
	c.tempData = c.Demo && !dataGiven
	return c, explainEnv(c.validate(), c.fromEnv)
}

// envError is an environment variable whose value its flag cannot take.
type envError struct {
	Var, Value, Flag, Accepts string
}

func (e *envError) Error() string {
	return fmt.Sprintf("%s=%q: want %s (it sets --%s; unset it or fix the value)", e.Var, e.Value, e.Accepts, e.Flag)
}

// newEnvError explains, by the flag's type, what an environment variable
// accepts. Only typed flags can fail to parse, and no secret is typed.
func newEnvError(f *flag.Flag, value string) error {
	accepts := "a valid value"
	if g, ok := f.Value.(flag.Getter); ok {
		switch g.Get().(type) {
		case time.Duration:
			accepts = "a duration such as 500ms, 10s, 5m or 1h30m"
		case bool:
			accepts = "true or false (1, 0, t, f, TRUE, FALSE also work)"
		case int:
			accepts = "a whole number such as 8"
		case float64:
			accepts = "a number such as 1 or 0.5"
		}
	}
	if _, ok := f.Value.(*byteSize); ok {
		accepts = "a size such as 64MiB, 1GiB or 0 (off)"
	}
	if isSecretFlag(f.Name) {
		value = "[redacted]"
	}
	return &envError{Var: envName(f.Name), Value: value, Flag: f.Name, Accepts: accepts}
}

// isSecretFlag tells the flags whose value must not be repeated in an error.
func isSecretFlag(name string) bool {
	switch name {
	case "access-key", "admin-token", "funnelkit-password", "funnelkit-url", "smtp-url", "store":
		return true
	}
	return false
}

// explainEnv adds to an error that names a flag which the environment set
// the variable and value it came from (secrets not repeated).
func explainEnv(err error, fromEnv map[string]string) error {
	if err == nil || len(fromEnv) == 0 {
		return err
	}
	msg := err.Error()
	names := make([]string, 0, len(fromEnv))
	for name := range fromEnv {
		if mentionsFlag(msg, name) {
			names = append(names, name)
		}
	}
	if len(names) == 0 {
		return err
	}
	slices.Sort(names)
	notes := make([]string, 0, len(names))
	for _, name := range names {
		if isSecretFlag(name) {
			notes = append(notes, fmt.Sprintf("--%s was set by %s", name, envName(name)))
		} else {
			notes = append(notes, fmt.Sprintf("--%s was set by %s=%q", name, envName(name), fromEnv[name]))
		}
	}
	return fmt.Errorf("%w (%s)", err, strings.Join(notes, ", "))
}

// mentionsFlag tells whether msg names --name as a whole word.
func mentionsFlag(msg, name string) bool {
	word := "--" + name
	for i := 0; i < len(msg); {
		j := strings.Index(msg[i:], word)
		if j < 0 {
			return false
		}
		end := i + j + len(word)
		if end == len(msg) || !(msg[end] == '-' || msg[end] >= 'a' && msg[end] <= 'z') {
			return true
		}
		i = end
	}
	return false
}

func (c *serveConfig) validate() error {
	if _, _, err := net.SplitHostPort(c.Addr); err != nil {
		return fmt.Errorf("--addr %q is not host:port (for example 127.0.0.1:8080)", c.Addr)
	}
	if c.MetricsAddr != "" {
		if _, _, err := net.SplitHostPort(c.MetricsAddr); err != nil {
			return fmt.Errorf("--metrics-addr %q is not host:port", c.MetricsAddr)
		}
	}
	if c.PprofAddr != "" {
		host, _, err := net.SplitHostPort(c.PprofAddr)
		if ip := net.ParseIP(host); err != nil || ip == nil || !ip.IsLoopback() {
			return fmt.Errorf("--pprof-addr %q is not a loopback host:port (for example 127.0.0.1:6060): the profiler must not be reachable from outside", c.PprofAddr)
		}
	}
	if !c.Demo {
		if c.FunnelKitURL == "" {
			return errors.New("--funnelkit-url is required (your FunnelKit site, e.g. https://shop.example.com), or try --demo")
		}
		if c.FunnelKitUser == "" || c.FunnelKitPassword == "" {
			return errors.New("--funnelkit-user and --funnelkit-password are required: a WordPress user and an Application Password (Users → Profile → Application Passwords)")
		}
	}
	if c.Wait < 0 || c.Wait > 40*time.Second {
		return fmt.Errorf("--wait %s must be between 0s and 40s (FunnelKit gives up after 45s)", c.Wait)
	}
	if c.RetryInitial <= 0 || c.RetryMax < c.RetryInitial {
		return fmt.Errorf("--retry-initial (%s) must be positive and at most --retry-max (%s)", c.RetryInitial, c.RetryMax)
	}
	if c.RetryInitial > time.Second {
		return fmt.Errorf("--retry-initial %s: the first retry must come within 1s", c.RetryInitial)
	}
	if c.ReturnAttempts < 1 || c.MailAttempts < 1 || c.Concurrency < 1 {
		return errors.New("--password-return-attempts, --mail-attempts and --concurrency must be at least 1")
	}
	if c.ProcessingConcurrency < 1 || c.FunnelKitConcurrency < 1 || c.ContactCache < 1 {
		return errors.New("--processing-concurrency, --funnelkit-concurrency and --contact-cache must be at least 1")
	}
	if c.PasswordHashCost < keystore.MinHashCost || c.PasswordHashCost > keystore.MaxHashCost {
		return fmt.Errorf("--password-hash-cost %d must be from %d to %d (bcrypt's range; %d is the default, each step doubles the CPU of every new user)",
			c.PasswordHashCost, keystore.MinHashCost, keystore.MaxHashCost, keystore.DefaultHashCost)
	}
	if c.PasswordHashWorkers < 0 {
		return fmt.Errorf("--password-hash-workers %d must be 0 (one per CPU) or more", c.PasswordHashWorkers)
	}
	if c.TakeoverAfter < time.Second || c.TakeoverAfter > 24*time.Hour {
		return fmt.Errorf("--takeover-after %s must be between 1s and 24h: another node replaces a password it cannot unseal that long after its issuing node's last sign of life", c.TakeoverAfter)
	}
	if c.FunnelKitTimeout <= 0 {
		return errors.New("--funnelkit-timeout must be positive")
	}
	if c.ReceiptRetention < 0 {
		return fmt.Errorf("--receipt-retention %s must be 0 (keep every receipt) or a positive duration such as 720h", c.ReceiptRetention)
	}
	if c.AuthFailRate < 0 || math.IsNaN(c.AuthFailRate) || math.IsInf(c.AuthFailRate, 0) {
		return fmt.Errorf("--auth-fail-rate %v must be a number of failures per second, 0 or more (0 turns throttling off)", c.AuthFailRate)
	}
	if c.AuthFailRate > 0 && c.AuthFailBurst < 1 {
		return fmt.Errorf("--auth-fail-burst %d must be at least 1 (or turn throttling off with --auth-fail-rate 0)", c.AuthFailBurst)
	}
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(c.LogLevel)); err != nil {
		return fmt.Errorf("--log-level must be debug, info, warn or error, not %q", c.LogLevel)
	}
	switch c.LogFormat {
	case "auto", "text", "json":
	default:
		return fmt.Errorf("--log-format must be auto, text or json, not %q", c.LogFormat)
	}
	if c.LoginURL != "" {
		if u, err := url.Parse(c.LoginURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return fmt.Errorf("--login-url %q must be an http or https URL", c.LoginURL)
		}
	}
	if strings.TrimSpace(c.Data) == "" {
		return errors.New("--data is empty: give the data directory")
	}
	if _, err := parseStore(c.Store); err != nil {
		return err
	}
	_, err := c.policy()
	return err
}

// policy builds the domain policy from the role and field flags.
func (c *serveConfig) policy() (domain.Policy, error) {
	p := domain.Policy{
		DefaultRole:   domain.Role(strings.ToLower(strings.TrimSpace(c.DefaultRole))),
		FieldMap:      domain.DefaultFieldMap(),
		PasswordField: strings.TrimSpace(c.PasswordField),
	}
	for _, r := range strings.Split(c.Roles, ",") {
		r = strings.ToLower(strings.TrimSpace(r))
		if r == "" || r == string(domain.Administrator) {
			continue
		}
		p.AllowedRoles = append(p.AllowedRoles, domain.Role(r))
	}
	if c.FieldMap != "" {
		for _, entry := range strings.Split(c.FieldMap, ",") {
			k, v, ok := strings.Cut(strings.TrimSpace(entry), "=")
			k, v = strings.TrimSpace(k), strings.TrimSpace(v)
			if !ok || k == "" || v == "" {
				return p, fmt.Errorf("--field-map entry %q must be meta_key=funnelkit_field", entry)
			}
			p.FieldMap[k] = v
		}
	}
	if err := p.Validate(); err != nil {
		return p, fmt.Errorf("--default-role/--roles/--field-map: %w", err)
	}
	return p, nil
}

// credentials are the stored digests of the generated access key and admin
// token: the plain values are shown once and never written.
type credentials struct {
	AccessKeySHA256  string `json:"access_key_sha256"`
	AdminTokenSHA256 string `json:"admin_token_sha256"`
}

// secrets resolves the access key and admin token: from the flags, else
// from the stored digests, else newly generated. fresh holds the plain text
// of what was generated now, to print once. Nothing is written: save
// stores the digests of what was generated, and serve calls it only once it
// is listening, just before it prints fresh, so that a start that fails
// leaves no key behind that was never shown.
func secrets(dir string, accessKey, adminToken string, regenerate bool) (access, admin usershttp.Secret, fresh map[string]string, save func() error, err error) {
	path := filepath.Join(dir, "credentials.json")
	var stored credentials
	b, err := os.ReadFile(path)
	switch {
	case err == nil:
		if err := json.Unmarshal(b, &stored); err != nil {
			return access, admin, nil, nil, fmt.Errorf("read %s: %w (delete it to generate a new access key and admin token)", path, err)
		}
	case !errors.Is(err, os.ErrNotExist):
		return access, admin, nil, nil, fmt.Errorf("read %s: %w", path, err)
	}
	fresh = map[string]string{}
	resolve := func(name, flagValue string, digest *string) (usershttp.Secret, error) {
		if flagValue != "" {
			return usershttp.NewSecret(flagValue), nil
		}
		if *digest != "" && !regenerate {
			s, err := usershttp.SecretFromDigest(*digest)
			if err != nil {
				return s, fmt.Errorf("%s in %s: %w (delete the file to generate new ones)", name, path, err)
			}
			return s, nil
		}
		plain, err := randomToken()
		if err != nil {
			return usershttp.Secret{}, err
		}
		s := usershttp.NewSecret(plain)
		*digest = s.Digest()
		fresh[name] = plain
		return s, nil
	}
	if access, err = resolve("access key", accessKey, &stored.AccessKeySHA256); err != nil {
		return
	}
	if admin, err = resolve("admin token", adminToken, &stored.AdminTokenSHA256); err != nil {
		return
	}
	save = func() error { return nil }
	if len(fresh) > 0 {
		save = func() error { return saveCredentials(path, stored) }
	}
	return access, admin, fresh, save, nil
}

// saveCredentials writes the digests atomically (write, fsync, rename).
func saveCredentials(path string, c credentials) error {
	b, err := json.MarshalIndent(c, "", "  ")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	_, err = f.Write(append(b, '\n'))
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

func randomToken() (string, error) {
	b := make([]byte, 24)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("generate a token: %w", err)
	}
	return base64.RawURLEncoding.EncodeToString(b), nil
}
