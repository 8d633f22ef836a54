package metrics

import (
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// Cluster metrics: what an operator needs to see several nodes share one
// EventStoreDB (docs/operations.md, "Several nodes"). None of them carries
// a node label: Prometheus adds instance.
//
// Lost races and wasted CRM reads are exported on every store (on one node
// a webhook's outcome can lose to the intake of the next webhook of its
// contact). The work feed's metrics exist only on a node that joined the
// work feed (--store esdb://…): on the embedded store they are absent.

// cluster is the part of Metrics for several nodes.
type cluster struct {
	racesLost *prometheus.CounterVec
	crmWasted *prometheus.CounterVec

	workOnce         sync.Once
	workInFlight     prometheus.Gauge
	workRedeliveries prometheus.Counter
	workUp           prometheus.Gauge
	workItems        *prometheus.CounterVec
	workDrops        prometheus.Counter
	workStale        prometheus.Counter
}

// Label values of the cluster metrics; anything else is counted as "other".
var (
	raceUseCases = []string{"webhook", "claim", "password_return", "welcome_email"}
	// crmWasteReasons: read_again (the webhook left to decide was recorded
	// after the read, so the contact was read again), unused (another
	// writer closed what the read was for), gave_up (the re-decisions'
	// bound was reached; the work is left for later).
	crmWasteReasons = []string{"read_again", "unused", "gave_up"}
	workResults     = []string{"acked", "nacked", "lost"}
)

func (m *Metrics) newCluster() []prometheus.Collector {
	c := &m.cluster
	c.racesLost = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "races_lost_total",
		Help: "Appends at an expected version that lost to another writer (the stream moved on, or what the decision read changed), by use case (webhook, claim, password_return, welcome_email); each is decided again or left for later."},
		[]string{"use_case"})
	c.crmWasted = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "crm_reads_wasted_total",
		Help: "FunnelKit contact reads no recorded decision used because the decision lost a race, by what followed (read_again, unused, gave_up)."},
		[]string{"reason"})
	for _, u := range raceUseCases {
		c.racesLost.WithLabelValues(u)
	}
	for _, r := range crmWasteReasons {
		c.crmWasted.WithLabelValues(r)
	}
	return []prometheus.Collector{c.racesLost, c.crmWasted}
}

// RaceLost counts an append that lost to another writer in a use case
// (webhook, claim, password_return, welcome_email).
func (m *Metrics) RaceLost(useCase string) {
	m.cluster.racesLost.WithLabelValues(bounded(useCase, raceUseCases, "other")).Inc()
}

// CRMReadWasted counts a FunnelKit contact read that a lost race made
// useless, by reason (read_again, unused, gave_up).
func (m *Metrics) CRMReadWasted(reason string) {
	m.cluster.crmWasted.WithLabelValues(bounded(reason, crmWasteReasons, "other")).Inc()
}

// WorkFeed registers the work feed's metrics (once; later calls return
// the same) and returns what feeds them. Call it only on a node that joins
// the work feed, so that a node without one exports none of them.
func (m *Metrics) WorkFeed() *WorkFeedMetrics {
	c := &m.cluster
	c.workOnce.Do(func() {
		c.workInFlight = prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Name: "work_in_flight",
			Help: "Work items the work feed handed this node and it has not acked or nacked yet (the server gives them to another node if this one dies, or after the message timeout)."})
		c.workRedeliveries = prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "work_redeliveries_total",
			Help: "Work items delivered to this node again (retry count above 0): after a message timeout, a Nack, a node that left or a leader change."})
		c.workUp = prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Name: "work_subscription_up",
			Help: "1 while this node is joined to the work feed's persistent subscription, 0 from a drop until it has joined again."})
		c.workItems = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "work_items_total",
			Help: "Work items this node settled, by result (acked, nacked, lost: the subscription dropped first and the server delivers it again)."},
			[]string{"result"})
		c.workDrops = prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "work_subscription_drops_total",
			Help: "Times this node lost the work feed's subscription (or failed to join it) and tried again."})
		c.workStale = prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "work_stale_taken_total",
			Help: "Contacts this node took up because their oldest open webhook had waited past --takeover-after (its work item held by a node alive but stuck, or lost)."})
		for _, r := range workResults {
			c.workItems.WithLabelValues(r)
		}
		m.Registry.MustRegister(c.workInFlight, c.workRedeliveries, c.workUp, c.workItems, c.workDrops, c.workStale)
	})
	return &WorkFeedMetrics{c: c}
}

// WorkFeedMetrics feeds the work feed's metrics from its hooks. A nil
// *WorkFeedMetrics counts nothing.
type WorkFeedMetrics struct{ c *cluster }

// InFlight sets the items held (the feed's OnInFlight).
func (w *WorkFeedMetrics) InFlight(n int) {
	if w != nil {
		w.c.workInFlight.Set(float64(n))
	}
}

// Redelivered counts an item delivered again (OnRedelivery).
func (w *WorkFeedMetrics) Redelivered() {
	if w != nil {
		w.c.workRedeliveries.Inc()
	}
}

// Subscribed marks the subscription joined (OnSubscribed).
func (w *WorkFeedMetrics) Subscribed() {
	if w != nil {
		w.c.workUp.Set(1)
	}
}

// Dropped marks the subscription lost (OnDropped).
func (w *WorkFeedMetrics) Dropped() {
	if w != nil {
		w.c.workUp.Set(0)
		w.c.workDrops.Inc()
	}
}

// Settled counts an item settled: acked, nacked or lost.
func (w *WorkFeedMetrics) Settled(result string) {
	if w != nil {
		w.c.workItems.WithLabelValues(bounded(result, workResults, "lost")).Inc()
	}
}

// StaleTaken counts a contact taken up by the sweep for stale work.
func (w *WorkFeedMetrics) StaleTaken() {
	if w != nil {
		w.c.workStale.Inc()
	}
}
