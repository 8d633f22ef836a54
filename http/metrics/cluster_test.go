package metrics_test

import (
	"strings"
	"testing"

	"github.com/usersync/usersync/http/metrics"
)

// TestCluster_WorkFeedMetricsOnlyOnceJoined_LabelsBounded: the work feed's
// metrics appear only once a feed is watched (registered once however
// often asked), follow its hooks, and every label value outside the known
// ones is counted as "other" (or "lost"), never as itself.
func TestCluster_WorkFeedMetricsOnlyOnceJoined_LabelsBounded(t *testing.T) {
	m := metrics.New()
	for name := range gathered(t, m) {
		if strings.HasPrefix(name, "usersync_work_") {
			t.Fatalf("%s exported before a feed", name)
		}
	}
	var none *metrics.WorkFeedMetrics
	none.InFlight(3) // a nil one counts nothing and does not panic
	none.Dropped()

	w := m.WorkFeed()
	if m.WorkFeed() == nil {
		t.Fatal("a second WorkFeed")
	}
	w.Subscribed()
	w.InFlight(2)
	w.Redelivered()
	w.Settled("acked")
	w.Settled("nacked")
	w.Settled("contact-7") // unknown: lost
	w.Dropped()
	m.RaceLost("webhook")
	m.RaceLost("password_return")
	m.RaceLost("ada@example.com")
	m.CRMReadWasted("unused")
	m.CRMReadWasted("anything")

	got := gathered(t, m)
	for name, want := range map[string]float64{
		"usersync_work_in_flight":                               2,
		"usersync_work_subscription_up":                         0,
		"usersync_work_subscription_drops_total":                1,
		"usersync_work_redeliveries_total":                      1,
		`usersync_work_items_total{result="acked"}`:             1,
		`usersync_work_items_total{result="nacked"}`:            1,
		`usersync_work_items_total{result="lost"}`:              1,
		`usersync_races_lost_total{use_case="webhook"}`:         1,
		`usersync_races_lost_total{use_case="password_return"}`: 1,
		`usersync_races_lost_total{use_case="claim"}`:           0,
		`usersync_races_lost_total{use_case="welcome_email"}`:   0,
		`usersync_races_lost_total{use_case="other"}`:           1,
		`usersync_crm_reads_wasted_total{reason="unused"}`:      1,
		`usersync_crm_reads_wasted_total{reason="read_again"}`:  0,
		`usersync_crm_reads_wasted_total{reason="gave_up"}`:     0,
		`usersync_crm_reads_wasted_total{reason="other"}`:       1,
	} {
		v, ok := got[name]
		if !ok || v != want {
			t.Errorf("%s = %v (exported %v), want %v", name, v, ok, want)
		}
	}
	for name := range got {
		if strings.Contains(name, "contact-7") || strings.Contains(name, "ada@") {
			t.Errorf("unbounded label value exported: %s", name)
		}
	}
}

// gathered is every sample of m's registry by name{label="value",…}.
func gathered(t *testing.T, m *metrics.Metrics) map[string]float64 {
	t.Helper()
	families, err := m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, f := range families {
		for _, s := range f.GetMetric() {
			name := f.GetName()
			if len(s.GetLabel()) > 0 {
				var ls []string
				for _, l := range s.GetLabel() {
					ls = append(ls, l.GetName()+`="`+l.GetValue()+`"`)
				}
				name += "{" + strings.Join(ls, ",") + "}"
			}
			switch {
			case s.Counter != nil:
				out[name] = s.GetCounter().GetValue()
			case s.Gauge != nil:
				out[name] = s.GetGauge().GetValue()
			}
		}
	}
	return out
}
