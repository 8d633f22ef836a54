package main

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	nethttp "net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// maxMessages bounds the distinct answer messages a run keeps count of.
const maxMessages = 20

// errNotLoopback is a connection refused because its address is not on
// this machine (and --allow-remote was not given).
var errNotLoopback = errors.New("not a loopback address (pass --allow-remote to allow it)")

// newTransport is an HTTP transport for up to conns connections that only
// dials loopback addresses unless allowRemote: whatever a name resolves
// to, the load stays on this machine.
func newTransport(conns int, allowRemote bool) *nethttp.Transport {
	d := &net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}
	if !allowRemote {
		d.Control = func(_, address string, _ syscall.RawConn) error {
			host, _, err := net.SplitHostPort(address)
			if ip := net.ParseIP(host); err != nil || ip == nil || !ip.IsLoopback() {
				return fmt.Errorf("connect to %s: %w", address, errNotLoopback)
			}
			return nil
		}
	}
	return &nethttp.Transport{
		DialContext:         d.DialContext,
		MaxIdleConns:        conns,
		MaxIdleConnsPerHost: conns,
		IdleConnTimeout:     90 * time.Second,
		DisableCompression:  true,
	}
}

// sender sends the webhooks of one run.
type sender struct {
	cfg       *loadConfig
	client    *nethttp.Client
	base      *url.URL
	accessKey string
	// beforeUpdate, when set, runs before an update or update_tags
	// webhook is sent for a contact (the simulator changes its tags).
	beforeUpdate func(contact, i uint64)

	// Live counters for the progress line.
	sent, answered, failed, inFlight atomic.Int64
}

// connStats is what one connection saw; they are merged at the end.
type connStats struct {
	latency, service histogram
	statuses         map[int]uint64
	answers          map[string]uint64
	errors           map[string]uint64
	messages         map[string]uint64
	actions          map[string]uint64
	// queued are the ids of the webhooks answered "queued": processing
	// goes on after the answer.
	queued []string
}

func newConnStats() *connStats {
	return &connStats{statuses: map[int]uint64{}, answers: map[string]uint64{}, errors: map[string]uint64{},
		messages: map[string]uint64{}, actions: map[string]uint64{}}
}

func (c *connStats) merge(o *connStats) {
	c.latency.Merge(&o.latency)
	c.service.Merge(&o.service)
	for k, v := range o.statuses {
		c.statuses[k] += v
	}
	for k, v := range o.answers {
		c.answers[k] += v
	}
	for k, v := range o.errors {
		c.errors[k] += v
	}
	for k, v := range o.actions {
		c.actions[k] += v
	}
	for k, v := range o.messages {
		countMessage(c.messages, k, v)
	}
	c.queued = append(c.queued, o.queued...)
}

// countMessage counts an answer's message, keeping at most maxMessages
// distinct ones (the rest are counted as "(other messages)").
func countMessage(m map[string]uint64, msg string, n uint64) {
	if _, ok := m[msg]; !ok && len(m) >= maxMessages {
		msg = "(other messages)"
	}
	m[msg] += n
}

// sendResult is what a run's sending phase did.
type sendResult struct {
	stats    *connStats
	started  time.Time
	finished time.Time
}

// run sends the webhooks: each connection takes the next request of the
// schedule, waits for its intended time (with --rate), sends it and
// records its latency from the intended time, so that a slow answer
// delays no measurement (no coordinated omission). It stops at
// --requests, at --duration (no request is started after it; those in
// flight finish within --timeout), or when ctx ends.
func (s *sender) run(ctx context.Context) sendResult {
	cfg := s.cfg
	start := time.Now()
	deadline := start.Add(cfg.Duration)
	var next atomic.Uint64
	all := newConnStats()
	var mu sync.Mutex
	var wg sync.WaitGroup
	for w := range cfg.Connections {
		wg.Add(1)
		go func() {
			defer wg.Done()
			st := newConnStats()
			r := rand.New(rand.NewPCG(cfg.Seed, uint64(w)))
			pick := newPicker(cfg.Skew, cfg.FirstContact, cfg.Contacts, r)
			timer := time.NewTimer(time.Hour)
			timer.Stop()
			var conn *rawConn
			if s.base.Scheme == "http" {
				conn = &rawConn{addr: hostPort(s.base), host: s.base.Host, allowRemote: cfg.AllowRemote, timeout: cfg.Timeout}
				defer conn.close()
			}
			for ctx.Err() == nil {
				i := next.Add(1) - 1
				if cfg.Requests > 0 && i >= uint64(cfg.Requests) {
					break
				}
				intended := time.Now()
				if cfg.Rate > 0 {
					intended = start.Add(time.Duration(float64(i) * float64(time.Second) / cfg.Rate))
				}
				if !intended.Before(deadline) {
					break
				}
				if wait := time.Until(intended); wait > 0 {
					timer.Reset(wait)
					select {
					case <-ctx.Done():
						timer.Stop()
						continue
					case <-timer.C:
					}
				}
				s.send(ctx, st, conn, r, pick, i, intended)
			}
			mu.Lock()
			all.merge(st)
			mu.Unlock()
		}()
	}
	wg.Wait()
	return sendResult{stats: all, started: start, finished: time.Now()}
}

// webhookAnswer is the part of usersync's webhook answer the tool reads.
type webhookAnswer struct {
	Success   bool   `json:"success"`
	Message   string `json:"message"`
	WebhookID string `json:"webhook_id"`
	Status    string `json:"status"`
}

// send sends request i and records what came back. conn is the
// connection's raw client (nil for https, which goes through net/http).
func (s *sender) send(ctx context.Context, st *connStats, conn *rawConn, r *rand.Rand, pick *picker, i uint64, intended time.Time) {
	contact := pick.pick(i)
	action := s.cfg.Mix.pick(r)
	st.actions[action]++
	if action != "add" && s.beforeUpdate != nil {
		s.beforeUpdate(contact, i)
	}
	method, target, contentType, body := s.payload(i, action, contact)
	s.sent.Add(1)
	s.inFlight.Add(1)
	defer s.inFlight.Add(-1)
	t0 := time.Now()
	var a answer
	var err error
	if conn != nil {
		a, err = conn.do(ctx, method, target, contentType, body)
	} else {
		a, err = s.viaNetHTTP(ctx, method, target, contentType, body)
	}
	end := time.Now()
	if err != nil {
		s.failed.Add(1)
		st.errors[errorKind(err)]++
		return
	}
	s.answered.Add(1)
	st.latency.Record(end.Sub(intended))
	st.service.Record(end.Sub(t0))
	st.statuses[a.status]++
	var wa webhookAnswer
	if err := json.Unmarshal(a.body, &wa); err != nil {
		st.answers["(not a usersync answer)"]++
		return
	}
	st.answers[cmp.Or(wa.Status, "(none)")]++
	if wa.Status == "queued" && wa.WebhookID != "" {
		st.queued = append(st.queued, wa.WebhookID)
	}
	if !wa.Success {
		countMessage(st.messages, truncate(wa.Message, 100), 1)
	}
}

func (s *sender) viaNetHTTP(ctx context.Context, method, target, contentType string, body []byte) (answer, error) {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := nethttp.NewRequestWithContext(ctx, method, s.base.Scheme+"://"+s.base.Host+target, rd)
	if err != nil {
		return answer{}, err
	}
	if body != nil {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := s.client.Do(req)
	if err != nil {
		return answer{}, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return answer{}, err
	}
	return answer{status: resp.StatusCode, body: data}, nil
}

// payload is webhook i as FunnelKit sends it: the rows in the query
// string (get), a form body (form) or a JSON object of strings (json).
// target is the path and query to request.
func (s *sender) payload(i uint64, action string, contact uint64) (method, target, contentType string, body []byte) {
	id := strconv.FormatUint(contact, 10)
	rows := "wpf_action=" + action + "&contact_id=" + id + "&access_key=" + url.QueryEscape(s.accessKey)
	obj := `{"wpf_action":"` + action + `","contact_id":"` + id + `","access_key":` + strconv.Quote(s.accessKey)
	if s.cfg.Async {
		rows += "&async=1"
		obj += `,"async":"1"`
	}
	if s.cfg.Notify && action == "add" {
		rows += "&send_notification=1"
		obj += `,"send_notification":"1"`
	}
	format := s.cfg.Method
	if format == "mixed" {
		format = []string{"get", "form", "json"}[i%3]
	}
	path := s.base.EscapedPath()
	switch format {
	case "get":
		return nethttp.MethodGet, path + "?" + rows, "", nil
	case "form":
		return nethttp.MethodPost, path, "application/x-www-form-urlencoded", []byte(rows)
	}
	return nethttp.MethodPost, path, "application/json", []byte(obj + "}")
}

// errorKind names a failed request's error without its URL (a GET
// webhook's URL holds the access key).
func errorKind(err error) string {
	var ne net.Error
	switch {
	case errors.Is(err, errNotLoopback):
		return "refused: not a loopback address"
	case errors.Is(err, context.Canceled):
		return "cancelled (the run was stopped)"
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused"
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return "connection reset"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "connection closed by usersync"
	case errors.Is(err, syscall.EADDRNOTAVAIL):
		return "out of local ports (EADDRNOTAVAIL)"
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err
	}
	return "other: " + truncate(err.Error(), 80)
}

// truncate cuts s to at most n bytes, on a character boundary.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return strings.ToValidUTF8(s[:n], "") + "…"
}

// hostPort is u's host with its port (80 or 443 when it has none).
func hostPort(u *url.URL) string {
	if u.Port() != "" {
		return u.Host
	}
	if u.Scheme == "https" {
		return net.JoinHostPort(u.Hostname(), "443")
	}
	return net.JoinHostPort(u.Hostname(), "80")
}
