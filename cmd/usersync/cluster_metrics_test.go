package main

import (
	"strings"
	"testing"

	"github.com/usersync/usersync/eventstore/esdb/esdbtest"
	"github.com/usersync/usersync/funnelkit"
)

// TestMetrics_WorkFeed_OnEventStoreDB: on EventStoreDB the work feed's
// hooks move the cluster metrics. Given a node on a stand-in, when a
// webhook waits for its CRM retries (its work item held, unacked) and the
// stand-in drops every subscription, then the node shows its item in
// flight, the drop, the item delivered again and the subscription up
// again; once FunnelKit answers, the items are settled (the first one
// lost with its subscription, the redelivered one acked) and nothing is in
// flight.
func TestMetrics_WorkFeed_OnEventStoreDB(t *testing.T) {
	srv := esdbtest.New(t)
	h := newHarness(t, func(c *serveConfig) { c.Store = srv.ConnString() })
	value := func(metric string, labels map[string]string) float64 {
		m, _ := scrape(t, h.app.addr)
		return m[metric].get(labels)
	}
	h.eventually("the work subscription up", func() bool { return value("usersync_work_subscription_up", nil) == 1 })

	// The webhook's item is held while FunnelKit fails.
	h.sim.FailNext(funnelkit.EndpointContact, 100_000, 503)
	if a := h.send("json", hook("add", "1", "async", "true")); a.Code != 202 {
		t.Fatalf("async add: %+v", a)
	}
	h.eventually("one item in flight", func() bool { return value("usersync_work_in_flight", nil) == 1 })

	srv.DropSubscriptions()
	h.eventually("the drop counted and the item delivered again", func() bool {
		return value("usersync_work_subscription_drops_total", nil) >= 1 &&
			value("usersync_work_redeliveries_total", nil) >= 1
	})
	h.eventually("the subscription up again", func() bool { return value("usersync_work_subscription_up", nil) == 1 })

	h.sim.ClearFaults()
	h.eventually("the user", func() bool { _, ok := h.user(1); return ok })
	h.eventually("every item settled", func() bool {
		return value("usersync_work_in_flight", nil) == 0 &&
			value("usersync_work_items_total", map[string]string{"result": "acked"}) >= 1 &&
			value("usersync_work_items_total", map[string]string{"result": "lost"}) >= 1
	})
	if !strings.Contains(h.logs.String(), "work feed dropped; joining again") {
		t.Error("the drop was not logged")
	}
	// The cluster's counters are there from the first scrape, at zero
	// when no race was lost.
	m, _ := scrape(t, h.app.addr)
	for _, u := range []string{"webhook", "claim", "password_return", "welcome_email"} {
		if len(m["usersync_races_lost_total"].samplesWith(map[string]string{"use_case": u})) != 1 {
			t.Errorf("usersync_races_lost_total{use_case=%q} not exported", u)
		}
	}
	for _, r := range []string{"read_again", "unused", "gave_up"} {
		if len(m["usersync_crm_reads_wasted_total"].samplesWith(map[string]string{"reason": r})) != 1 {
			t.Errorf("usersync_crm_reads_wasted_total{reason=%q} not exported", r)
		}
	}
}

// TestMetrics_NoWorkFeed_OnTheEmbeddedStore: a node on the embedded store
// has no work feed, so none of its metrics; the lost races are exported.
func TestMetrics_NoWorkFeed_OnTheEmbeddedStore(t *testing.T) {
	h := newHarness(t, func(c *serveConfig) { c.Store = "" })
	h.send("get", hook("add", "1"))
	m, _ := scrape(t, h.app.addr)
	for name := range m {
		if strings.HasPrefix(name, "usersync_work_") {
			t.Errorf("%s exported on the embedded store", name)
		}
	}
	if m["usersync_races_lost_total"] == nil || m["usersync_crm_reads_wasted_total"] == nil {
		t.Error("the lost races' counters are missing")
	}
}

// samplesWith are the samples whose labels include want.
func (f *familyValues) samplesWith(want map[string]string) []sample {
	if f == nil {
		return nil
	}
	var out []sample
	for _, s := range f.samples {
		ok := true
		for k, v := range want {
			ok = ok && s.labels[k] == v
		}
		if ok {
			out = append(out, s)
		}
	}
	return out
}
