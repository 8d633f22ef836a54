package main

import (
	"encoding/json"
	"io"
	nethttp "net/http"
	"os"
	"regexp"
	"sort"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/usersync/usersync/funnelkit"
	"github.com/usersync/usersync/http/metrics"
)

// scrape reads /metrics from addr and parses it.
func scrape(t *testing.T, addr string) (map[string]*familyValues, string) {
	t.Helper()
	resp, err := nethttp.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(strings.NewReader(string(body)))
	if err != nil {
		t.Fatalf("parse exposition: %v", err)
	}
	out := map[string]*familyValues{}
	for name, f := range families {
		fv := &familyValues{}
		for _, m := range f.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			var v float64
			switch {
			case m.Counter != nil:
				v = m.GetCounter().GetValue()
			case m.Gauge != nil:
				v = m.GetGauge().GetValue()
			case m.Histogram != nil:
				v = float64(m.GetHistogram().GetSampleCount())
			case m.Untyped != nil:
				v = m.GetUntyped().GetValue()
			}
			fv.samples = append(fv.samples, sample{labels, v})
		}
		out[name] = fv
	}
	return out, string(body)
}

type sample struct {
	labels map[string]string
	value  float64
}

type familyValues struct{ samples []sample }

// get sums the samples whose labels include want.
func (f *familyValues) get(want map[string]string) float64 {
	if f == nil {
		return 0
	}
	sum := 0.0
	for _, s := range f.samples {
		ok := true
		for k, v := range want {
			if s.labels[k] != v {
				ok = false
			}
		}
		if ok {
			sum += s.value
		}
	}
	return sum
}

func TestMetrics_MoveWithAnEndToEndRun(t *testing.T) {
	h := newHarness(t, func(c *serveConfig) { c.MetricsAddr = "127.0.0.1:0" })
	before, _ := scrape(t, h.app.addr)
	if before["usersync_webhooks_total"].get(map[string]string{"action": "add", "outcome": "processed"}) != 0 {
		t.Fatal("fresh server counts processed adds")
	}
	h.send("get", hook("add", "1", "send_notification", "true"))
	h.send("form", hook("update_tags", "2"))
	h.send("json", hook("update", "1", "access_key", "wrong"))
	h.sim.FailWith(funnelkit.EndpointContact, 1, funnelkit.KindNotFound)
	h.send("get", hook("update", "1"))
	h.eventually("the password return and welcome email", func() bool {
		m, _ := scrape(t, h.app.addr)
		return m["usersync_password_returns"].get(map[string]string{"status": "returned"}) == 1 &&
			m["usersync_welcome_emails_total"].get(map[string]string{"outcome": "sent"}) == 1
	})
	head, _ := h.app.store.Head(t.Context())
	h.eventually("the views to catch up", func() bool {
		m, _ := scrape(t, h.app.addr)
		return m["usersync_projection_lag_events"].get(map[string]string{"projection": "users"}) == 0 &&
			m["usersync_head_position"].get(nil) >= float64(head)
	})
	m, body := scrape(t, h.app.addr)
	checks := []struct {
		metric string
		labels map[string]string
		want   float64
	}{
		{"usersync_webhooks_total", map[string]string{"action": "add", "outcome": "processed"}, 1},
		{"usersync_webhooks_total", map[string]string{"action": "update_tags", "outcome": "ignored"}, 1},
		{"usersync_webhooks_total", map[string]string{"action": "none", "outcome": "rejected"}, 1},
		{"usersync_webhooks_total", map[string]string{"action": "update", "outcome": "failed"}, 1},
		{"usersync_webhook_duration_seconds", map[string]string{"action": "add"}, 1},
		{"usersync_events_appended_total", map[string]string{"type": "UserCreated"}, 1},
		{"usersync_events_appended_total", map[string]string{"type": "PasswordReturned"}, 1},
		{"usersync_funnelkit_errors_total", map[string]string{"endpoint": "GET contacts/{id}", "kind": "not_found"}, 1},
		{"usersync_password_return_attempts_total", map[string]string{"outcome": "returned"}, 1},
		{"usersync_welcome_emails_total", map[string]string{"outcome": "sent"}, 1},
		{"usersync_users", nil, 1},
		{"usersync_password_returns", map[string]string{"status": "pending"}, 0},
		{"usersync_webhooks_open", nil, 0},
		{"usersync_webhooks_retrying", nil, 0},
	}
	for _, c := range checks {
		if got := m[c.metric].get(c.labels); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.metric, c.labels, got, c.want)
		}
	}
	atLeast := []struct {
		metric string
		labels map[string]string
	}{
		{"usersync_append_duration_seconds", nil},
		{"usersync_append_batch_size", nil},
		{"usersync_commit_duration_seconds", nil},
		{"usersync_funnelkit_request_duration_seconds", map[string]string{"endpoint": "GET contacts/{id}", "status_class": "2xx"}},
		{"usersync_funnelkit_request_duration_seconds", map[string]string{"endpoint": "POST contacts/{id}/fields", "status_class": "2xx"}},
		{"usersync_watermill_handler_execution_time_seconds", map[string]string{"handler_name": "welcome_email"}},
		{"usersync_pipeline_batch_events_total", map[string]string{"consumer": "views"}},
		{"usersync_pipeline_read_events_total", nil},
		{"usersync_projection_position", map[string]string{"projection": "password_return"}},
	}
	for _, c := range atLeast {
		if embeddedOnly(c.metric) && os.Getenv(testStoreEnv) != "" {
			continue
		}
		if m[c.metric].get(c.labels) < 1 {
			t.Errorf("%s%v did not move", c.metric, c.labels)
		}
	}
	// Nothing secret or unbounded in any label.
	for _, secret := range []string{testKey, testToken, testFKPass, "ann@example.com", "contact_id"} {
		if strings.Contains(body, secret) {
			t.Errorf("/metrics holds %q", secret)
		}
	}
	// The exposition passes the Prometheus linter.
	problems, err := promlint.New(strings.NewReader(body)).Lint()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		if strings.HasPrefix(p.Metric, "usersync_") {
			t.Errorf("promlint: %s: %s", p.Metric, p.Text)
		}
	}
	// The separate metrics listener serves the same registry.
	if h.app.metricsAddr == "" {
		t.Fatal("--metrics-addr not served")
	}
	if other, _ := scrape(t, h.app.metricsAddr); other["usersync_users"].get(nil) != 1 {
		t.Fatal("--metrics-addr serves other metrics")
	}
}

// metricNames finds the metric names a PromQL text refers to.
var metricName = regexp.MustCompile(`\b(usersync_[a-z0-9_]+|go_[a-z0-9_]+|process_[a-z0-9_]+)\b`)

func TestDashboardAndAlerts_UseOnlyExportedMetrics(t *testing.T) {
	h := newHarness(t)
	h.send("get", hook("add", "1"))
	m, _ := scrape(t, h.app.addr)
	exported := map[string]bool{}
	for name := range m {
		exported[name] = true
		for _, suffix := range []string{"_bucket", "_sum", "_count"} {
			exported[name+suffix] = true
		}
	}
	// The work feed's metrics exist only on a node on EventStoreDB.
	feedOnly := metrics.New()
	feedOnly.WorkFeed()
	families, err := feedOnly.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if strings.HasPrefix(f.GetName(), "usersync_work_") {
			exported[f.GetName()] = true
		}
	}
	var texts []string
	dash, err := os.ReadFile("../../docs/grafana/usersync.json")
	if err != nil {
		t.Fatal(err)
	}
	var anyJSON any
	if err := json.Unmarshal(dash, &anyJSON); err != nil {
		t.Fatalf("dashboard is not valid JSON: %v", err)
	}
	texts = append(texts, string(dash))
	alerts, err := os.ReadFile("../../docs/prometheus/alerts.yml")
	if err != nil {
		t.Fatal(err)
	}
	texts = append(texts, string(alerts))
	used := map[string]bool{}
	for _, text := range texts {
		for _, name := range metricName.FindAllString(text, -1) {
			used[name] = true
		}
	}
	var missing []string
	for name := range used {
		if !exported[name] {
			missing = append(missing, name)
		}
	}
	sort.Strings(missing)
	if len(missing) > 0 {
		t.Fatalf("the dashboard or alerts use metrics usersync does not export: %v", missing)
	}
	if len(used) < 20 {
		t.Fatalf("only %d metrics found in the dashboard and alerts: the scan is broken", len(used))
	}
}

// embeddedOnly tells the metrics only the embedded store's group commit
// moves (on EventStoreDB the server commits).
func embeddedOnly(metric string) bool {
	return metric == "usersync_append_batch_size" || metric == "usersync_commit_duration_seconds"
}
