package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"
)

// loadConfig is every flag of the load command.
type loadConfig struct {
	Target      string
	AccessKey   string
	AdminToken  string
	AllowRemote bool

	Simulator     bool
	SimulatorAddr string
	CRMLatency    time.Duration
	ChangeTags    bool
	Serve         string
	ServeData     string
	ServeFlags    []string
	ServeLog      string
	ServeTimeout  time.Duration

	Contacts     int
	FirstContact int
	Skew         skew
	Mix          mix
	Method       string
	Async        bool
	Notify       bool
	Rate         float64
	Connections  int
	Duration     time.Duration
	Requests     int
	Timeout      time.Duration
	DrainTimeout time.Duration
	PollInterval time.Duration
	Seed         uint64
	JSON         bool
	Progress     string
}

// maxDurationWithRequests bounds a run given by --requests alone.
const maxDurationWithRequests = 10 * time.Minute

// defaultDuration is a run's length when neither --duration nor
// --requests is given.
const defaultDuration = 10 * time.Second

// stringList is a repeatable string flag.
type stringList []string

func (l *stringList) String() string     { return strings.Join(*l, " ") }
func (l *stringList) Set(v string) error { *l = append(*l, v); return nil }

// rateFlag is --rate: requests per second, "500" or "500/s"; 0 is flat out.
type rateFlag float64

func (r *rateFlag) String() string { return strconv.FormatFloat(float64(*r), 'g', -1, 64) }
func (r *rateFlag) Set(v string) error {
	s := strings.TrimSuffix(strings.TrimSpace(v), "/s")
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || f < 0 || math.IsNaN(f) || math.IsInf(f, 0) {
		return fmt.Errorf("want requests per second such as 500 or 500/s, or 0 for flat out")
	}
	*r = rateFlag(f)
	return nil
}

type mixFlag struct{ m *mix }

func (f mixFlag) String() string {
	if f.m == nil {
		return ""
	}
	return f.m.String()
}
func (f mixFlag) Set(v string) error {
	m, err := parseMix(v)
	if err != nil {
		return err
	}
	*f.m = m
	return nil
}

type skewFlag struct{ s *skew }

func (f skewFlag) String() string {
	if f.s == nil {
		return ""
	}
	return f.s.String()
}
func (f skewFlag) Set(v string) error {
	s, err := parseSkew(v)
	if err != nil {
		return err
	}
	*f.s = s
	return nil
}

func loadFlags(stderr io.Writer) (*flag.FlagSet, *loadConfig) {
	c := &loadConfig{}
	c.Mix, _ = parseMix("update_tags=100")
	c.Skew, _ = parseSkew("uniform")
	fs := flag.NewFlagSet("usersync-load", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&c.Target, "target", "", "usersync's base URL, e.g. http://127.0.0.1:8080 (not with --serve, which starts its own)")
	fs.StringVar(&c.AccessKey, "access-key", os.Getenv("USERSYNC_ACCESS_KEY"), "webhook access key of --target (default $USERSYNC_ACCESS_KEY; --serve generates one)")
	fs.StringVar(&c.AdminToken, "admin-token", os.Getenv("USERSYNC_ADMIN_TOKEN"), "admin token of --target, to follow processing through /api/webhooks/{id} (default $USERSYNC_ADMIN_TOKEN; --serve generates one)")
	fs.BoolVar(&c.AllowRemote, "allow-remote", false, "allow a --target that is not a loopback address (127.0.0.0/8, ::1, localhost)")

	fs.BoolVar(&c.Simulator, "simulator", false, "start the built-in FunnelKit simulator with --contacts contacts (implied by --serve)")
	fs.StringVar(&c.SimulatorAddr, "simulator-addr", "127.0.0.1:0", "loopback address of the simulator (give a fixed port to point a usersync you start yourself at it)")
	fs.DurationVar(&c.CRMLatency, "crm-latency", 50*time.Millisecond, "time the simulator takes to answer each FunnelKit request")
	fs.BoolVar(&c.ChangeTags, "change-tags", true, "with --simulator: change the contact's tags in the simulator before each update or update_tags webhook, so that each one has something to do")
	fs.StringVar(&c.Serve, "serve", "", "usersync binary to start (BINARY serve …) on a loopback port, pointed at the simulator, and stop at the end")
	fs.StringVar(&c.ServeData, "serve-data", "", "with --serve: its --data directory, e.g. one made by usersync-load seed (default: a new temporary directory, removed at the end)")
	fs.Var((*stringList)(&c.ServeFlags), "serve-flag", "with --serve: one more flag for usersync serve, e.g. --serve-flag=--concurrency=16 (repeatable)")
	fs.StringVar(&c.ServeLog, "serve-log", "", "with --serve: write usersync's log to this file (default: a temporary file, kept and named only if something failed)")
	fs.DurationVar(&c.ServeTimeout, "serve-timeout", 5*time.Minute, "with --serve: how long usersync may take to be ready (GET /readyz; a large store takes a while)")

	fs.IntVar(&c.Contacts, "contacts", 1000, "number of FunnelKit contacts the webhooks are about")
	fs.IntVar(&c.FirstContact, "first-contact", 1, "id of the first contact (the contacts are FIRST … FIRST+N-1)")
	fs.Var(skewFlag{&c.Skew}, "skew", "how webhooks pick contacts: uniform, seq (each in turn), zipf=S (S > 1, the lowest ids hottest), hot=F/S (a fraction F of the contacts gets a share S of the webhooks, e.g. hot=0.01/0.5)")
	fs.Var(mixFlag{&c.Mix}, "mix", "actions by weight, e.g. add=10,update=40,update_tags=50")
	fs.StringVar(&c.Method, "method", "get", "how webhooks are sent: get (query string), form (POST form body, FunnelKit's default), json (POST JSON body), or mixed (each in turn)")
	fs.BoolVar(&c.Async, "async", false, "send async=1: usersync answers 202 once recorded, and processes afterwards")
	fs.BoolVar(&c.Notify, "notify", false, "send send_notification=1 with every add (a welcome email each)")
	fs.Var((*rateFlag)(&c.Rate), "rate", "requests per second, paced from a schedule (latency counts from each request's intended time); 0 sends flat out")
	fs.IntVar(&c.Connections, "connections", 16, "concurrent connections (each sends one request at a time)")
	fs.DurationVar(&c.Duration, "duration", 0, "how long to send (default 10s, or up to 10m with --requests)")
	fs.IntVar(&c.Requests, "requests", 0, "how many webhooks to send (0: as many as --duration allows)")
	fs.DurationVar(&c.Timeout, "timeout", 45*time.Second, "timeout of each request (FunnelKit's is 45s)")
	fs.DurationVar(&c.DrainTimeout, "drain-timeout", 5*time.Minute, "after sending, how long to wait for every webhook to reach a final status (0: do not wait)")
	fs.DurationVar(&c.PollInterval, "poll-interval", 100*time.Millisecond, "how often to look again at webhooks still being processed")
	fs.Uint64Var(&c.Seed, "seed", 1, "seed of the random choices (contacts, actions), for repeatable runs")
	fs.BoolVar(&c.JSON, "json", false, "print the summary as JSON")
	fs.StringVar(&c.Progress, "progress", "auto", "progress line on stderr: auto (when stderr is a terminal), on, off")
	return fs, c
}

// parseLoad reads and validates the load command's flags.
func parseLoad(args []string, stderr io.Writer) (*loadConfig, error) {
	fs, c := loadFlags(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: usersync-load [flags]\n\nSends FunnelKit-shaped webhooks to usersync and reports throughput, latency,\nerrors and the time until every webhook was processed. See docs/benchmarks.md.\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil, errHelp
		}
		return nil, errUsage
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q (flags start with --; the seeder is usersync-load seed)", fs.Arg(0))
	}
	return c, c.validate()
}

func (c *loadConfig) validate() error {
	if c.Serve != "" {
		c.Simulator = true
		if c.Target != "" {
			return errors.New("--serve starts its own usersync: leave --target out, or drop --serve to load a running one")
		}
	} else {
		if c.Target == "" {
			return errors.New("--target is required (e.g. --target http://127.0.0.1:8080 --access-key KEY), or --serve BINARY to start a usersync")
		}
		if c.ServeData != "" || len(c.ServeFlags) > 0 || c.ServeLog != "" {
			return errors.New("--serve-data, --serve-flag and --serve-log need --serve BINARY")
		}
		u, err := url.Parse(c.Target)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return fmt.Errorf("--target %q must be an http:// or https:// URL, e.g. http://127.0.0.1:8080", c.Target)
		}
		if !c.AllowRemote && !loopbackHost(u.Hostname()) {
			return fmt.Errorf("--target %s is not a loopback address: load only a usersync on this machine (127.0.0.1, ::1, localhost), or pass --allow-remote if you really mean it", u.Host)
		}
		if c.AccessKey == "" {
			return errors.New("--access-key is required with --target (or set USERSYNC_ACCESS_KEY)")
		}
	}
	if c.Simulator {
		host, _, err := net.SplitHostPort(c.SimulatorAddr)
		if err != nil || !loopbackHost(host) {
			return fmt.Errorf("--simulator-addr %q must be a loopback host:port, e.g. 127.0.0.1:0", c.SimulatorAddr)
		}
		if c.CRMLatency < 0 {
			return fmt.Errorf("--crm-latency %s must not be negative", c.CRMLatency)
		}
	}
	if c.Contacts < 1 || c.FirstContact < 1 {
		return fmt.Errorf("--contacts (%d) and --first-contact (%d) must be at least 1", c.Contacts, c.FirstContact)
	}
	if c.Contacts > 100_000_000 {
		return fmt.Errorf("--contacts %d: at most 100,000,000", c.Contacts)
	}
	if !slices.Contains([]string{"get", "form", "json", "mixed"}, c.Method) {
		return fmt.Errorf("--method %q: want get, form, json or mixed", c.Method)
	}
	if c.Connections < 1 || c.Connections > 4096 {
		return fmt.Errorf("--connections %d: want 1 to 4096", c.Connections)
	}
	if c.Requests < 0 || c.Duration < 0 {
		return errors.New("--requests and --duration must not be negative")
	}
	switch {
	case c.Duration == 0 && c.Requests == 0:
		c.Duration = defaultDuration
	case c.Duration == 0:
		c.Duration = maxDurationWithRequests
	}
	if c.Timeout <= 0 || c.DrainTimeout < 0 || c.PollInterval <= 0 || c.ServeTimeout <= 0 {
		return errors.New("--timeout, --poll-interval and --serve-timeout must be positive, --drain-timeout 0 or more")
	}
	if !slices.Contains([]string{"auto", "on", "off"}, c.Progress) {
		return fmt.Errorf("--progress %q: want auto, on or off", c.Progress)
	}
	return nil
}

// loopbackHost tells whether host names this machine: localhost or a
// loopback IP address.
func loopbackHost(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(strings.Trim(host, "[]"))
	return ip != nil && ip.IsLoopback()
}
