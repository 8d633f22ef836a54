package http

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	nethttp "net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/usersync/usersync/domain"
)

// syncBuffer is a log destination safe for concurrent writes.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func slogJSON(w io.Writer) *slog.Logger { return slog.New(slog.NewJSONHandler(w, nil)) }

// logField is one field of a JSON log line.
type logField struct {
	Key   string
	Value any
}

// logLines reads JSON log lines with their fields in order, leaving out
// time and the value of duration_seconds (kept as "*").
func logLines(t *testing.T, text string) [][]logField {
	t.Helper()
	var out [][]logField
	for _, line := range strings.Split(strings.TrimSpace(text), "\n") {
		if line == "" {
			continue
		}
		dec := json.NewDecoder(strings.NewReader(line))
		dec.UseNumber()
		if _, err := dec.Token(); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		var fields []logField
		for dec.More() {
			k, err := dec.Token()
			if err != nil {
				t.Fatalf("log line %q: %v", line, err)
			}
			var v any
			if err := dec.Decode(&v); err != nil {
				t.Fatalf("log line %q: %v", line, err)
			}
			switch k {
			case "time":
				continue
			case "duration_seconds":
				v = "*"
			}
			if n, ok := v.(json.Number); ok {
				v = n.String()
			}
			fields = append(fields, logField{k.(string), v})
		}
		out = append(out, fields)
	}
	return out
}

// serve serves h on a loopback port for the test.
func serve(t testing.TB, h nethttp.Handler) string {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv.URL
}

func get(t *testing.T, url string) {
	t.Helper()
	resp, err := nethttp.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
}

// The logging decorator writes one line per webhook with the fields the
// handler's report calls for, in the order docs/operations.md shows them.
func TestLogWebhooks(t *testing.T) {
	f := func(k string, v any) logField { return logField{k, v} }
	tests := []struct {
		name string
		rep  WebhookReport
		want []logField
	}{
		{"refused before it has an id",
			WebhookReport{Action: "none", Outcome: "rejected", Status: 403, Reason: "Invalid Access Key"},
			[]logField{f("level", "INFO"), f("msg", "webhook"), f("outcome", "rejected"), f("status", "403"), f("reason", "Invalid Access Key"),
				f("method", "GET"), f("source", "127.0.0.1"), f("duration_seconds", "*")}},
		{"test",
			WebhookReport{Action: "test", Outcome: "test", Status: 200, WebhookID: "w1"},
			[]logField{f("level", "INFO"), f("msg", "webhook"), f("webhook_id", "w1"), f("action", "test"), f("outcome", "test"), f("duration_seconds", "*")}},
		{"rejected before the contact id is read",
			WebhookReport{Action: "unknown", Outcome: "rejected", Status: 400, Reason: "unknown wpf_action", WebhookID: "w2"},
			[]logField{f("level", "INFO"), f("msg", "webhook"), f("webhook_id", "w2"), f("action", "unknown"), f("outcome", "rejected"), f("status", "400"),
				f("reason", "unknown wpf_action"), f("duration_seconds", "*")}},
		{"rejected with its contact",
			WebhookReport{Action: "add", Outcome: "rejected", Status: 400, Reason: "bad role", WebhookID: "w3", ContactID: 7},
			[]logField{f("level", "INFO"), f("msg", "webhook"), f("webhook_id", "w3"), f("action", "add"), f("contact_id", "7"), f("outcome", "rejected"),
				f("status", "400"), f("reason", "bad role"), f("duration_seconds", "*")}},
		{"ignored",
			WebhookReport{Action: "add", Outcome: "ignored", Status: 200, Reason: "Abort: Contact data not found", WebhookID: "w4"},
			[]logField{f("level", "INFO"), f("msg", "webhook"), f("webhook_id", "w4"), f("action", "add"), f("outcome", "ignored"), f("status", "200"),
				f("reason", "Abort: Contact data not found"), f("duration_seconds", "*")}},
		{"queued",
			WebhookReport{Action: "update", Outcome: "queued", Status: 202, Reason: "Queued", WebhookID: "w5", ContactID: 8},
			[]logField{f("level", "INFO"), f("msg", "webhook"), f("webhook_id", "w5"), f("action", "update"), f("contact_id", "8"), f("outcome", "queued"),
				f("reason", "Queued"), f("duration_seconds", "*")}},
		{"the sender went away",
			WebhookReport{Action: "update", Outcome: "queued", Reason: "the sender went away; processing continues", WebhookID: "w6", ContactID: 8},
			[]logField{f("level", "INFO"), f("msg", "webhook"), f("webhook_id", "w6"), f("action", "update"), f("contact_id", "8"), f("outcome", "queued"),
				f("reason", "the sender went away; processing continues"), f("duration_seconds", "*")}},
		{"processed",
			WebhookReport{Action: "add", Outcome: "processed", Processed: true, Status: 200, Message: "user created", WebhookID: "w7", ContactID: 9},
			[]logField{f("level", "INFO"), f("msg", "webhook"), f("webhook_id", "w7"), f("action", "add"), f("contact_id", "9"), f("outcome", "processed"),
				f("status", "200"), f("message", "user created"), f("duration_seconds", "*")}},
		{"retrying, with an empty message",
			WebhookReport{Action: "add", Outcome: "retrying", Processed: true, Status: 202, WebhookID: "w8", ContactID: 9},
			[]logField{f("level", "INFO"), f("msg", "webhook"), f("webhook_id", "w8"), f("action", "add"), f("contact_id", "9"), f("outcome", "retrying"),
				f("status", "202"), f("message", ""), f("duration_seconds", "*")}},
		{"not recorded",
			WebhookReport{Action: "add", Outcome: "failed", Status: 500, WebhookID: "w9", ContactID: 9, Err: errors.New("disk full")},
			[]logField{f("level", "ERROR"), f("msg", "record webhook"), f("webhook_id", "w9"), f("action", "add"), f("contact_id", "9"), f("err", "disk full")}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			logs := &syncBuffer{}
			log := slog.New(slog.NewJSONHandler(logs, nil))
			handler := nethttp.HandlerFunc(func(w nethttp.ResponseWriter, r *nethttp.Request) {
				_, rep := Report(r)
				*rep = tt.rep
			})
			get(t, serve(t, logWebhooks(log, nil, nil)(handler))+"/?access_key=secret-key")
			lines := logLines(t, logs.String())
			if len(lines) != 1 {
				t.Fatalf("%d log lines, want 1:\n%s", len(lines), logs.String())
			}
			if !reflect.DeepEqual(lines[0], tt.want) {
				t.Errorf("log line\n%v\nwant\n%v", lines[0], tt.want)
			}
			if strings.Contains(logs.String(), "secret-key") {
				t.Errorf("the query string is in the log: %s", logs.String())
			}
		})
	}
}

// The metrics decorator observes each webhook once, with the webhooks
// metric's outcomes, and shares the report with the decorators it wraps.
func TestObserveWebhooks(t *testing.T) {
	tests := []struct {
		name                    string
		rep                     *WebhookReport
		wantAction, wantOutcome string
	}{
		{"refused (nothing reported)", nil, "none", "rejected"},
		{"test counts as processed", &WebhookReport{Action: "test", Outcome: "test", WebhookID: "w"}, "test", "processed"},
		{"retrying counts as queued", &WebhookReport{Action: "add", Outcome: "retrying", Processed: true, WebhookID: "w"}, "add", "queued"},
		{"processed", &WebhookReport{Action: "add", Outcome: "processed", Processed: true, WebhookID: "w"}, "add", "processed"},
		{"ignored", &WebhookReport{Action: "update", Outcome: "ignored", WebhookID: "w"}, "update", "ignored"},
		{"not recorded", &WebhookReport{Action: "add", Outcome: "failed", Err: errors.New("disk full"), WebhookID: "w"}, "add", "failed"},
		{"queued", &WebhookReport{Action: "update_tags", Outcome: "queued", WebhookID: "w"}, "update_tags", "queued"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			type observation struct {
				action, outcome string
				d               time.Duration
			}
			seen := make(chan observation, 2)
			observe := func(action, outcome string, d time.Duration) { seen <- observation{action, outcome, d} }
			handler := nethttp.HandlerFunc(func(w nethttp.ResponseWriter, r *nethttp.Request) {
				if tt.rep != nil {
					_, rep := Report(r)
					*rep = *tt.rep
				}
			})
			logs := &syncBuffer{}
			// Around the logging decorator, as New stacks them.
			h := ObserveWebhooks(observe)(logWebhooks(slog.New(slog.NewJSONHandler(logs, nil)), nil, nil)(handler))
			get(t, serve(t, h)+"/")
			// Observed before the (empty) answer went out.
			var got observation
			select {
			case got = <-seen:
			default:
				t.Fatal("the webhook was not observed")
			}
			if got.action != tt.wantAction || got.outcome != tt.wantOutcome || got.d <= 0 {
				t.Errorf("observed %q %q in %s, want %q %q in some time", got.action, got.outcome, got.d, tt.wantAction, tt.wantOutcome)
			}
			if len(seen) != 0 {
				t.Error("observed more than once")
			}
			if n := len(logLines(t, logs.String())); n != 1 {
				t.Errorf("%d log lines, want 1", n)
			}
		})
	}
}

func TestReport_SharedAlongTheRequest(t *testing.T) {
	r := httptest.NewRequest("GET", "/", nil)
	r1, rep1 := Report(r)
	if rep1.Action != "none" || rep1.Outcome != "rejected" {
		t.Fatalf("a new report is %+v, want action none and outcome rejected", rep1)
	}
	r2, rep2 := Report(r1)
	if rep2 != rep1 || r2 != r1 {
		t.Fatal("a request with a report got another one")
	}
	rep1.ContactID = domain.ContactID(3)
	if _, rep := Report(r2); rep.ContactID != 3 {
		t.Fatal("the report is not shared")
	}
}
