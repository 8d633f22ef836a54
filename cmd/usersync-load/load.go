package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	nethttp "net/http"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/term"
)

// loadCmd is a whole run: start the world, send, drain, report, stop.
func loadCmd(ctx context.Context, args []string, stdout, stderr io.Writer) (err error) {
	cfg, err := parseLoad(args, stderr)
	if err != nil {
		return err
	}
	w, err := startWorld(ctx, cfg, stderr)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := w.close(stderr); cerr != nil && err == nil {
			err = cerr
		}
	}()
	base, err := url.Parse(w.target)
	if err != nil {
		return fmt.Errorf("--target %q: %w", w.target, err)
	}
	if base.Path == "" {
		base.Path = "/"
	}
	s := &sender{
		cfg:       cfg,
		client:    &nethttp.Client{Transport: newTransport(cfg.Connections, cfg.AllowRemote), Timeout: cfg.Timeout, CheckRedirect: noRedirects},
		base:      base,
		accessKey: w.accessKey,
	}
	if w.sim != nil && cfg.ChangeTags {
		s.beforeUpdate = w.changeTags
	}
	prog := newProgress(stderr, cfg)
	stopProg := prog.follow(s)
	sent := s.run(ctx)
	stopProg()

	rep := newReport(cfg, w, sent)
	switch {
	case cfg.DrainTimeout == 0:
		rep.Drain = &drainReport{Skipped: "--drain-timeout 0"}
	case w.adminToken == "" && len(sent.stats.queued) > 0:
		rep.Drain = &drainReport{Skipped: "no --admin-token: cannot follow processing"}
	case ctx.Err() != nil:
		rep.Drain = &drainReport{Skipped: "stopped"}
	default:
		d := &drainer{
			client:   &nethttp.Client{Transport: newTransport(drainWorkers, cfg.AllowRemote), Timeout: 10 * time.Second, CheckRedirect: noRedirects},
			base:     base,
			token:    w.adminToken,
			interval: cfg.PollInterval,
			progress: prog.drained,
		}
		res := d.drain(ctx, sent.stats.queued, cfg.DrainTimeout)
		prog.end()
		rep.setDrain(sent, res)
	}
	if w.sim != nil {
		rep.CRMRequests = w.sim.Requests()
	}
	if cfg.JSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(rep); err != nil {
			return err
		}
	} else {
		rep.write(stdout)
	}
	if d := rep.Drain; d != nil && d.Error != "" {
		return fmt.Errorf("following processing: %s", d.Error)
	}
	if d := rep.Drain; d != nil && d.Unfinished > 0 {
		return fmt.Errorf("%d webhooks were not processed within --drain-timeout %s", d.Unfinished, cfg.DrainTimeout)
	}
	return nil
}

func noRedirects(*nethttp.Request, []*nethttp.Request) error { return nethttp.ErrUseLastResponse }

// durations is a latency summary in milliseconds.
type durations struct {
	P50  float64 `json:"p50"`
	P90  float64 `json:"p90"`
	P99  float64 `json:"p99"`
	P999 float64 `json:"p99_9"`
	Max  float64 `json:"max"`
	Mean float64 `json:"mean"`
}

func summarize(h *histogram) durations {
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	return durations{P50: ms(h.Quantile(0.5)), P90: ms(h.Quantile(0.9)), P99: ms(h.Quantile(0.99)), P999: ms(h.Quantile(0.999)),
		Max: ms(h.Max()), Mean: ms(h.Mean())}
}

// drainReport is the processing after the answers.
type drainReport struct {
	// Followed is how many webhooks were answered "queued" and followed.
	Followed   int               `json:"followed"`
	Final      map[string]uint64 `json:"final"`
	Unfinished int               `json:"unfinished"`
	// ProcessedSeconds is from the first request to the moment usersync
	// finished the last webhook (the latest updated_at of the receipts),
	// AfterSendingSeconds from the last answer to that moment; SeenSeconds
	// is when the tool saw it (later by up to a poll interval and a sweep).
	ProcessedSeconds    float64 `json:"processed_s"`
	AfterSendingSeconds float64 `json:"after_sending_s"`
	SeenSeconds         float64 `json:"seen_s"`
	Lookups             uint64  `json:"lookups"`
	LookupErrors        uint64  `json:"lookup_errors"`
	Skipped             string  `json:"skipped,omitempty"`
	Error               string  `json:"error,omitempty"`
}

// report is the summary of a run (also the --json output).
type report struct {
	Target      string  `json:"target"`
	Method      string  `json:"method"`
	Mix         string  `json:"mix"`
	Skew        string  `json:"skew"`
	Contacts    int     `json:"contacts"`
	Async       bool    `json:"async"`
	Rate        float64 `json:"rate"`
	Connections int     `json:"connections"`
	CRMLatency  string  `json:"crm_latency,omitempty"`

	Sent        uint64            `json:"sent"`
	Answered    uint64            `json:"answered"`
	Actions     map[string]uint64 `json:"actions"`
	SendSeconds float64           `json:"send_s"`
	Throughput  float64           `json:"throughput_per_s"`
	// Latency counts from each request's intended send time (with
	// --rate) or its send time (flat out); ServiceTime from its send time.
	Latency     durations         `json:"latency_ms"`
	ServiceTime durations         `json:"service_time_ms"`
	Statuses    map[string]uint64 `json:"statuses"`
	Answers     map[string]uint64 `json:"answers"`
	Errors      map[string]uint64 `json:"errors"`
	Messages    map[string]uint64 `json:"messages,omitempty"`
	Drain       *drainReport      `json:"drain,omitempty"`
	CRMRequests int               `json:"crm_requests,omitempty"`
}

func newReport(cfg *loadConfig, w *world, sent sendResult) *report {
	st := sent.stats
	r := &report{
		Target: w.target, Method: cfg.Method, Mix: cfg.Mix.String(), Skew: cfg.Skew.String(), Contacts: cfg.Contacts,
		Async: cfg.Async, Rate: cfg.Rate, Connections: cfg.Connections,
		Answered: st.latency.Count(), Actions: st.actions,
		SendSeconds: sent.finished.Sub(sent.started).Seconds(),
		Latency:     summarize(&st.latency), ServiceTime: summarize(&st.service),
		Statuses: map[string]uint64{}, Answers: st.answers, Errors: map[string]uint64{}, Messages: st.messages,
	}
	if w.sim != nil {
		r.CRMLatency = cfg.CRMLatency.String()
	}
	for _, n := range st.actions {
		r.Sent += n
	}
	if r.SendSeconds > 0 {
		r.Throughput = float64(r.Answered) / r.SendSeconds
	}
	for code, n := range st.statuses {
		r.Statuses[strconv.Itoa(code)] = n
		if code < 200 || code > 299 {
			r.Errors[fmt.Sprintf("HTTP %d", code)] += n
		}
	}
	for k, n := range st.errors {
		r.Errors[k] += n
	}
	return r
}

func (r *report) setDrain(sent sendResult, res drainResult) {
	d := &drainReport{Followed: len(sent.stats.queued), Final: res.Final, Unfinished: res.Unfinished,
		Lookups: res.Lookups, LookupErrors: res.LookupErrors}
	if res.Err != nil {
		d.Error = res.Err.Error()
	}
	seen, last := res.LastFinal, res.LastUpdated
	if last.IsZero() || last.After(seen) {
		last = seen // no updated_at, or a clock that is not this one
	}
	if d.Followed == 0 || last.Before(sent.finished) {
		last = sent.finished
	}
	if d.Followed == 0 || seen.Before(sent.finished) {
		seen = sent.finished
	}
	d.AfterSendingSeconds = last.Sub(sent.finished).Seconds()
	d.ProcessedSeconds = last.Sub(sent.started).Seconds()
	d.SeenSeconds = seen.Sub(sent.started).Seconds()
	r.Drain = d
}

// write prints the summary for a person.
func (r *report) write(out io.Writer) {
	p := func(format string, a ...any) { fmt.Fprintf(out, format, a...) }
	pace := "flat out"
	if r.Rate > 0 {
		pace = fmt.Sprintf("%s/s", strconv.FormatFloat(r.Rate, 'f', -1, 64))
	}
	mode := "sync"
	if r.Async {
		mode = "async"
	}
	p("target       %s (%s, %s, %s, %d connections)\n", r.Target, r.Method, mode, pace, r.Connections)
	p("webhooks     %s over %d contacts (%s)", r.Mix, r.Contacts, r.Skew)
	if r.CRMLatency != "" {
		p(", simulator latency %s", r.CRMLatency)
	}
	p("\n")
	p("sent         %d in %.2fs: %.0f answers/s (%s)\n", r.Sent, r.SendSeconds, r.Throughput, counts(r.Actions))
	p("latency      p50 %s  p90 %s  p99 %s  p99.9 %s  max %s  (mean %s)\n", fmtMS(r.Latency.P50), fmtMS(r.Latency.P90),
		fmtMS(r.Latency.P99), fmtMS(r.Latency.P999), fmtMS(r.Latency.Max), fmtMS(r.Latency.Mean))
	if r.Rate > 0 {
		p("service time p50 %s  p90 %s  p99 %s  max %s  (from the actual send, not the schedule)\n",
			fmtMS(r.ServiceTime.P50), fmtMS(r.ServiceTime.P90), fmtMS(r.ServiceTime.P99), fmtMS(r.ServiceTime.Max))
	}
	p("HTTP         %s\n", counts(r.Statuses))
	p("answers      %s\n", counts(r.Answers))
	if len(r.Errors) > 0 {
		p("errors       %s\n", counts(r.Errors))
	} else {
		p("errors       none\n")
	}
	if len(r.Messages) > 0 {
		p("unsuccessful answers by message:\n")
		for _, k := range sortedKeys(r.Messages) {
			p("  %8d  %s\n", r.Messages[k], k)
		}
	}
	if d := r.Drain; d != nil {
		switch {
		case d.Skipped != "":
			p("processing   not followed (%s)\n", d.Skipped)
		case d.Followed == 0:
			p("processing   every webhook was final in its answer\n")
		default:
			p("processing   %d queued webhooks followed: %s", d.Followed, counts(d.Final))
			if d.Unfinished > 0 {
				p(", %d NOT FINISHED", d.Unfinished)
			}
			p("\n")
			p("processed    all within %.2fs of the first request (%.2fs after the last answer; seen at %.2fs, %d receipt look-ups)\n",
				d.ProcessedSeconds, d.AfterSendingSeconds, d.SeenSeconds, d.Lookups)
			if d.Unfinished > 0 {
				p("             (not all: the times are those of the last webhook seen final)\n")
			}
		}
		if d.Error != "" {
			p("             %s\n", d.Error)
		}
	}
	if r.CRMRequests > 0 {
		p("simulator    %d FunnelKit requests served\n", r.CRMRequests)
	}
}

func fmtMS(ms float64) string {
	switch {
	case ms >= 10000:
		return fmt.Sprintf("%.1fs", ms/1000)
	case ms >= 100:
		return fmt.Sprintf("%.0fms", ms)
	case ms >= 10:
		return fmt.Sprintf("%.1fms", ms)
	}
	return fmt.Sprintf("%.2fms", ms)
}

func sortedKeys(m map[string]uint64) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b string) int {
		if m[a] != m[b] {
			if m[a] > m[b] {
				return -1
			}
			return 1
		}
		return strings.Compare(a, b)
	})
	return keys
}

func counts(m map[string]uint64) string {
	if len(m) == 0 {
		return "none"
	}
	parts := make([]string, 0, len(m))
	for _, k := range sortedKeys(m) {
		parts = append(parts, fmt.Sprintf("%s %d", k, m[k]))
	}
	return strings.Join(parts, ", ")
}

// progress is the progress line on stderr, drawn only when stderr is a
// terminal (or --progress on).
type progress struct {
	out     io.Writer
	on      bool
	cfg     *loadConfig
	mu      sync.Mutex
	started time.Time
}

func newProgress(stderr io.Writer, cfg *loadConfig) *progress {
	return &progress{out: stderr, on: progressOn(cfg.Progress, stderr), cfg: cfg, started: time.Now()}
}

// progressOn reads --progress: on, off, or auto (on when w is a terminal).
func progressOn(mode string, w io.Writer) bool {
	if mode == "auto" {
		f, ok := w.(*os.File)
		return ok && term.IsTerminal(int(f.Fd()))
	}
	return mode == "on"
}

func (p *progress) line(s string) {
	if !p.on {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	fmt.Fprintf(p.out, "\r\033[K%s", s)
}

// end finishes the line.
func (p *progress) end() {
	if p.on {
		p.mu.Lock()
		fmt.Fprint(p.out, "\n")
		p.mu.Unlock()
	}
}

// follow draws the sending phase until the returned function is called.
func (p *progress) follow(s *sender) (stop func()) {
	if !p.on {
		return func() {}
	}
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		tick := time.NewTicker(250 * time.Millisecond)
		defer tick.Stop()
		start := time.Now()
		var lastN int64
		last := start
		for {
			select {
			case <-done:
				return
			case now := <-tick.C:
				n := s.answered.Load()
				rate := float64(n-lastN) / now.Sub(last).Seconds()
				lastN, last = n, now
				limit := ""
				if p.cfg.Requests > 0 {
					limit = fmt.Sprintf("/%d", p.cfg.Requests)
				}
				p.line(fmt.Sprintf("sending %s  %d%s answered  %.0f/s  %d in flight  %d errors  %s/%s",
					bar(float64(now.Sub(start))/float64(p.cfg.Duration), n, p.cfg.Requests), n, limit, rate,
					s.inFlight.Load(), s.failed.Load(), now.Sub(start).Round(time.Second), p.cfg.Duration))
			}
		}
	}()
	return func() {
		close(done)
		<-finished
		p.end()
	}
}

// drained draws the processing phase.
func (p *progress) drained(final, total int) {
	p.line(fmt.Sprintf("processing %s  %d/%d final  %s", bar(0, int64(final), total), final, total, time.Since(p.started).Round(100*time.Millisecond)))
}

// bar is a 20-cell bar of the larger of the time fraction and n of total.
func bar(timeFrac float64, n int64, total int) string {
	f := timeFrac
	if total > 0 {
		f = max(f, float64(n)/float64(total))
	}
	f = min(max(f, 0), 1)
	cells := int(f * 20)
	return "[" + strings.Repeat("#", cells) + strings.Repeat(".", 20-cells) + "]"
}
