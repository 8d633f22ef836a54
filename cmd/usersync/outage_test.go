package main

import (
	"fmt"
	"reflect"
	"sort"
	"strconv"
	"testing"
	"time"

	"github.com/usersync/usersync/domain"
	"github.com/usersync/usersync/funnelkit/simulator"
)

// outageRetry is the webhook schedule of the outage tests: short, so that
// many attempts fit in a fraction of a second.
var outageRetry = domain.Backoff{Initial: 20 * time.Millisecond, Max: 160 * time.Millisecond}

// outageMaxAttempts bounds the attempts one contact's webhooks can make in
// elapsed: the first at once, then each after at least the shortest
// jittered delay of the backoff, plus one in flight when the outage ends.
func outageMaxAttempts(elapsed time.Duration) int {
	n, at := 1, time.Duration(0)
	for {
		at += outageRetry.Jittered(n, 1)
		if at > elapsed {
			return n + 1
		}
		n++
	}
}

// written is the set of contacts whose fields FunnelKit has written.
func written(sim *simulator.Simulator) map[domain.ContactID]bool {
	out := map[domain.ContactID]bool{}
	for _, w := range sim.FieldWrites() {
		out[w.ContactID] = true
	}
	return out
}

// TestOutage_EveryAcknowledgedWebhookEndsProcessed is the proof that an
// outage of FunnelKit never makes an acknowledged webhook fail: for each
// kind of outage, webhooks (sync and async, adds and update_tags, several
// contacts) arrive while every FunnelKit request fails; all are answered
// as queued, wait visibly (usersync_webhooks_retrying), and, once the site
// answers again, end processed with the users as FunnelKit has them. The
// requests FunnelKit got meanwhile stay within what the backoff allows.
func TestOutage_EveryAcknowledgedWebhookEndsProcessed(t *testing.T) {
	outages := []struct {
		outage simulator.Outage
		kind   string // of usersync_funnelkit_errors_total
		// perAttempt is how many requests one attempt may send: Go's
		// transport sends a GET again once when a reused connection is
		// dropped.
		perAttempt int
	}{
		{simulator.OutageDown, "unreachable", 2},
		{simulator.OutageSlow, "unreachable", 1},
		{simulator.OutageServer, "server", 1},
		{simulator.OutageChallenge, "html", 1},
		{simulator.OutageAuth, "auth", 1},
	}
	for _, o := range outages {
		t.Run(o.outage.String(), func(t *testing.T) {
			t.Parallel()
			h := newHarness(t, func(c *serveConfig) {
				c.RetryInitial, c.RetryMax = outageRetry.Initial, outageRetry.Max
				c.FunnelKitTimeout = 100 * time.Millisecond
				c.Wait = 300 * time.Millisecond
			})
			// Users that exist before the outage, their passwords returned.
			for _, id := range []string{"1", "2", "5"} {
				a := h.send("get", hook("add", id, "async", "true"))
				h.eventually("add "+id+" before the outage", func() bool { return h.receipt(a.WebhookID).Status == "processed" })
			}
			h.eventually("the passwords to be returned", func() bool { return len(written(h.sim)) == 3 })
			before := map[int]string{}
			for _, id := range []int{1, 2, 5} {
				u, _ := h.user(id)
				before[id] = u.Login + " " + u.Email + " " + u.UserID
			}
			for id := 10; id < 14; id++ {
				h.sim.PutContact(simulator.Contact{ID: domain.ContactID(id), Email: fmt.Sprintf("c%d@example.com", id), FirstName: "C", TagIDs: []uint64{2}})
			}

			h.sim.StartOutage(o.outage)
			began := time.Now()
			// FunnelKit's data changes meanwhile: the updates must pick it up.
			h.sim.SetContactTags(1, 3)
			h.sim.SetContactTags(2, 1, 2)
			h.sim.SetContactTags(5)
			load := []struct{ how, action, id, async string }{
				{"get", "update_tags", "1", "false"},
				{"form", "add", "10", "false"},
				{"json", "update_tags", "2", "true"},
				{"get", "add", "11", "true"},
				{"form", "update_tags", "5", "false"},
				{"json", "add", "12", "false"},
				{"get", "update_tags", "1", "true"},
				{"form", "add", "13", "true"},
				{"json", "update_tags", "2", "false"},
			}
			var acked []string
			for _, l := range load {
				a := h.send(l.how, hook(l.action, l.id, "async", l.async))
				if a.Code != 202 || !a.Success || a.Status != "queued" {
					t.Fatalf("%s %s during the outage: %+v; want 202 queued", l.action, l.id, a)
				}
				acked = append(acked, a.WebhookID)
			}
			pending := 7 // contacts 1, 2, 5, 10, 11, 12, 13
			h.eventually("the webhooks to show as waiting for FunnelKit", func() bool {
				m, _ := scrape(t, h.app.addr)
				return m["usersync_webhooks_retrying"].get(nil) == float64(pending) &&
					m["usersync_funnelkit_errors_total"].get(map[string]string{"endpoint": "GET contacts/{id}", "kind": o.kind}) > 0
			})
			// Let every contact retry a few times (a condition, not a sleep).
			h.eventually("three attempts per waiting webhook", func() bool {
				for _, id := range acked {
					if r := h.receipt(id); r.Status != "queued" && r.Attempts < 3 {
						return false
					}
				}
				return true
			})
			for _, id := range acked {
				if r := h.receipt(id); r.Status == "failed" {
					t.Fatalf("webhook %s failed during the outage: %+v", id, r)
				}
			}

			h.sim.EndOutage()
			elapsed := time.Since(began)
			for _, id := range acked {
				h.eventually("webhook "+id+" to be processed", func() bool { return h.receipt(id).Status == "processed" })
			}

			// The users are as FunnelKit has them, and the old ones kept
			// their identity (once the users view has caught up).
			head, _ := h.app.store.Head(t.Context())
			h.eventually("the users view to catch up", func() bool {
				m, _ := scrape(t, h.app.addr)
				return m["usersync_projection_lag_events"].get(map[string]string{"projection": "users"}) == 0 &&
					m["usersync_head_position"].get(nil) >= float64(head)
			})
			wantTags := map[int][]domain.Tag{1: {{ID: 3, Name: "Trial"}}, 2: {{ID: 1, Name: "Customer"}, {ID: 2, Name: "VIP"}}, 5: nil}
			for id, want := range wantTags {
				u, ok := h.user(id)
				if !ok || (len(u.Tags) != 0 || len(want) != 0) && !reflect.DeepEqual(u.Tags, want) {
					t.Errorf("user %d: tags %+v, want %+v", id, u.Tags, want)
				}
				if got := u.Login + " " + u.Email + " " + u.UserID; got != before[id] {
					t.Errorf("user %d changed identity: %q, was %q", id, got, before[id])
				}
			}
			for id := 10; id < 14; id++ {
				u, ok := h.user(id)
				if !ok || u.Email != fmt.Sprintf("c%d@example.com", id) || len(u.Tags) != 1 || u.Tags[0].ID != 2 {
					t.Errorf("user %d after the outage: %+v, %v", id, u, ok)
				}
			}
			// A write that outlasted the client's timeout is sent again (the
			// same password): count the contacts written.
			h.eventually("the new users' passwords to be returned", func() bool { return len(written(h.sim)) == 3+4 })
			m, _ := scrape(t, h.app.addr)
			if got := m["usersync_webhooks_retrying"].get(nil); got != 0 {
				t.Errorf("usersync_webhooks_retrying = %v after recovery", got)
			}

			// FunnelKit got a bounded number of requests meanwhile.
			counts := h.sim.OutageRequests()
			limit := o.perAttempt * outageMaxAttempts(elapsed)
			ids := make([]int, 0, len(counts))
			total, peak := 0, 0
			for id, n := range counts {
				ids = append(ids, int(id))
				total += n
				peak = max(peak, n)
				if n > limit {
					t.Errorf("contact %d: %d requests during the %v outage, over the backoff's bound %d", id, n, elapsed.Round(time.Millisecond), limit)
				}
			}
			sort.Ints(ids)
			if len(ids) != pending {
				t.Errorf("requests during the outage for contacts %v, want the %d waiting ones", ids, pending)
			}
			per := ""
			for _, id := range ids {
				per += " " + strconv.Itoa(id) + ":" + strconv.Itoa(counts[domain.ContactID(id)])
			}
			t.Logf("outage %s: %v, %d requests for %d contacts (%.1f per contact; peak %d = %.1f/s; bound %d); per contact:%s",
				o.outage, elapsed.Round(time.Millisecond), total, len(ids), float64(total)/float64(len(ids)), peak,
				float64(peak)/elapsed.Seconds(), limit, per)
		})
	}
}
