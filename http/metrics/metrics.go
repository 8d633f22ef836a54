// Package metrics holds usersync's Prometheus metrics: counters and
// histograms the adapters feed through small Observe methods, and a
// collector that reads the views' checkpoints, the store's head and the
// password returns at scrape time. Every label has a bounded set of values:
// never a contact id, an email, a key or a request path.
package metrics

import (
	"context"
	"errors"
	"log/slog"
	nethttp "net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/usersync/usersync/domain"
	"github.com/usersync/usersync/projections"
)

const ns = "usersync"

// Metrics is every usersync metric, in its own registry.
type Metrics struct {
	Registry *prometheus.Registry

	webhooks        *prometheus.CounterVec
	webhookDuration *prometheus.HistogramVec
	refused         *prometheus.CounterVec
	eventsAppended  *prometheus.CounterVec
	appendDuration  prometheus.Histogram
	appendErrors    prometheus.Counter
	commitBatch     prometheus.Histogram
	commitDuration  prometheus.Histogram
	fkDuration      *prometheus.HistogramVec
	fkErrors        *prometheus.CounterVec
	parkedTotal     *prometheus.CounterVec
	welcomeEmails   *prometheus.CounterVec
	passwordResults *prometheus.CounterVec
	rebuildRunning  prometheus.Gauge
	rebuildPosition prometheus.Gauge
	rebuildHead     prometheus.Gauge
	rebuildEvents   prometheus.Counter
	pipelineRead    prometheus.Counter
	batchEvents     *prometheus.CounterVec
	batchDuration   *prometheus.HistogramVec

	cluster cluster
}

// Webhook actions and outcomes used as label values; anything else is
// counted as "unknown".
var (
	actions  = []string{"add", "update", "update_tags", "test", "unknown", "none"}
	outcomes = []string{"processed", "ignored", "rejected", "failed", "queued"}
)

// New makes the metrics and registers them, with the Go and process
// collectors, in a fresh registry.
func New() *Metrics {
	m := &Metrics{Registry: prometheus.NewRegistry()}
	m.webhooks = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "webhooks_total",
		Help: "Webhooks answered, by action and outcome (processed, ignored, rejected, failed, queued)."}, []string{"action", "outcome"})
	m.webhookDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: ns, Name: "webhook_duration_seconds",
		Help:    "Time from receiving a webhook to answering it, by action.",
		Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30}}, []string{"action"})
	m.refused = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "requests_refused_total",
		Help: "Requests refused before they were authenticated, by endpoint (webhook, api) and reason (unreadable, no_action, wrong_secret, throttled)."},
		[]string{"endpoint", "reason"})
	m.eventsAppended = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "events_appended_total",
		Help: "Events appended to the event store, by event type."}, []string{"type"})
	m.appendDuration = prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: ns, Name: "append_duration_seconds",
		Help:    "Time an append waits until its events are durable (fsynced).",
		Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, 1}})
	m.appendErrors = prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "append_errors_total",
		Help: "Appends that failed for another reason than a concurrency conflict."})
	m.commitBatch = prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: ns, Name: "append_batch_size",
		Help:    "Appends that shared one group commit (one fsync).",
		Buckets: []float64{1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024}})
	m.commitDuration = prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: ns, Name: "commit_duration_seconds",
		Help:    "Time of one group commit, fsync included.",
		Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, 1}})
	m.fkDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: ns, Name: "funnelkit_request_duration_seconds",
		Help:    "FunnelKit REST requests, by endpoint and status class (2xx, 4xx, 5xx, none).",
		Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 15}}, []string{"endpoint", "status_class"})
	m.fkErrors = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "funnelkit_errors_total",
		Help: "Failed FunnelKit requests, by endpoint and kind (unreachable, auth, not_found, server, client, empty_body, html, invalid_json)."},
		[]string{"endpoint", "kind"})
	m.parkedTotal = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "events_parked_total",
		Help: "Events a pipeline handler gave up on and parked, by handler."}, []string{"handler"})
	m.welcomeEmails = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "welcome_emails_total",
		Help: "Welcome email attempts, by outcome (sent, failed, gave_up)."}, []string{"outcome"})
	m.passwordResults = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "password_return_attempts_total",
		Help: "Password return attempts, by outcome (returned, failed, gave_up)."}, []string{"outcome"})
	m.rebuildRunning = prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Name: "rebuild_running",
		Help: "1 while a rebuild of the views runs."})
	m.rebuildPosition = prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Name: "rebuild_position",
		Help: "Position the running (or last) rebuild has reached."})
	m.rebuildHead = prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Name: "rebuild_head_position",
		Help: "Position the running (or last) rebuild runs to."})
	m.rebuildEvents = prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "rebuild_events_total",
		Help: "Events applied by rebuilds."})
	m.pipelineRead = prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "pipeline_read_events_total",
		Help: "Events the pipeline read from the event log: its one reader's, and those a consumer that fell behind read for itself."})
	m.batchEvents = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "pipeline_batch_events_total",
		Help: "Events handed to each batch consumer (the views) by the pipeline; its rate is the catch-up speed."}, []string{"consumer"})
	m.batchDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: ns, Name: "pipeline_batch_duration_seconds",
		Help:    "Time a batch consumer (the views) took to apply one batch of events.",
		Buckets: prometheus.ExponentialBuckets(0.0001, 4, 10)}, []string{"consumer"})
	m.Registry.MustRegister(
		m.pipelineRead, m.batchEvents, m.batchDuration,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		m.webhooks, m.webhookDuration, m.refused, m.eventsAppended, m.appendDuration, m.appendErrors, m.commitBatch, m.commitDuration,
		m.fkDuration, m.fkErrors, m.parkedTotal, m.welcomeEmails, m.passwordResults,
		m.rebuildRunning, m.rebuildPosition, m.rebuildHead, m.rebuildEvents,
	)
	m.Registry.MustRegister(m.newCluster()...)
	// Every label combination that can occur is exported at zero, so that
	// rates and alerts work from the first scrape.
	for _, a := range actions {
		for _, o := range outcomes {
			m.webhooks.WithLabelValues(a, o)
		}
	}
	for _, e := range refusedEndpoints {
		for _, r := range refusedReasons {
			m.refused.WithLabelValues(e, r)
		}
	}
	for _, t := range knownTypes {
		m.eventsAppended.WithLabelValues(t)
	}
	for _, e := range []string{"GET contacts/{id}", "GET contacts", "GET tags", "POST contacts/{id}/fields"} {
		for _, k := range []string{"unreachable", "auth", "not_found", "server", "client", "empty_body", "html", "invalid_json"} {
			m.fkErrors.WithLabelValues(e, k)
		}
	}
	for _, o := range []string{"sent", "failed", "gave_up"} {
		m.welcomeEmails.WithLabelValues(o)
	}
	for _, o := range []string{"returned", "failed", "gave_up"} {
		m.passwordResults.WithLabelValues(o)
	}
	return m
}

// Handler serves the exposition.
func (m *Metrics) Handler() nethttp.Handler {
	return promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{Registry: m.Registry})
}

func bounded(v string, allowed []string, other string) string {
	for _, a := range allowed {
		if v == a {
			return v
		}
	}
	return other
}

// ObserveWebhook counts an answered webhook.
func (m *Metrics) ObserveWebhook(action, outcome string, d time.Duration) {
	action = bounded(action, actions, "unknown")
	outcome = bounded(outcome, outcomes, "failed")
	m.webhooks.WithLabelValues(action, outcome).Inc()
	m.webhookDuration.WithLabelValues(action).Observe(d.Seconds())
}

// Endpoints and reasons of refused requests used as label values.
var (
	refusedEndpoints = []string{"webhook", "api"}
	refusedReasons   = []string{"unreadable", "no_action", "wrong_secret", "throttled"}
)

// Refused counts a request refused before it was authenticated.
func (m *Metrics) Refused(endpoint, reason string) {
	m.refused.WithLabelValues(bounded(endpoint, refusedEndpoints, "other"), bounded(reason, refusedReasons, "other")).Inc()
}

// knownTypes bounds the type label.
var knownTypes = domain.EventTypes()

// ObserveAppend records an append: its events by type and how long it took
// to become durable.
func (m *Metrics) ObserveAppend(events []domain.NewEvent, d time.Duration, err error) {
	if err != nil {
		if !isConflict(err) {
			m.appendErrors.Inc()
		}
		return
	}
	m.appendDuration.Observe(d.Seconds())
	for _, e := range events {
		m.eventsAppended.WithLabelValues(bounded(e.Type, knownTypes, "other")).Inc()
	}
}

// ObserveCommit records one group commit of the embedded store.
func (m *Metrics) ObserveCommit(appends int, d time.Duration) {
	m.commitBatch.Observe(float64(appends))
	m.commitDuration.Observe(d.Seconds())
}

// ObserveFunnelKit records one FunnelKit request; kind is "ok" on success.
func (m *Metrics) ObserveFunnelKit(endpoint string, status int, kind string, d time.Duration) {
	class := "none"
	if status >= 100 && status < 600 {
		class = strconv.Itoa(status/100) + "xx"
	}
	m.fkDuration.WithLabelValues(endpoint, class).Observe(d.Seconds())
	if kind != "ok" {
		m.fkErrors.WithLabelValues(endpoint, kind).Inc()
	}
}

// Parked counts a parked event.
func (m *Metrics) Parked(pe domain.ParkedEvent) { m.parkedTotal.WithLabelValues(pe.Handler).Inc() }

// WelcomeEmail counts a welcome email attempt.
func (m *Metrics) WelcomeEmail(outcome string) { m.welcomeEmails.WithLabelValues(outcome).Inc() }

// PasswordReturn counts a password return attempt.
func (m *Metrics) PasswordReturn(outcome string) { m.passwordResults.WithLabelValues(outcome).Inc() }

// RebuildProgress follows a rebuild; done marks its end.
func (m *Metrics) RebuildProgress(p projections.Progress, last *uint64, done bool) {
	m.rebuildPosition.Set(float64(p.Position))
	m.rebuildHead.Set(float64(p.Head))
	if p.Events > *last {
		m.rebuildEvents.Add(float64(p.Events - *last))
		*last = p.Events
	}
	if done {
		m.rebuildRunning.Set(0)
	} else {
		m.rebuildRunning.Set(1)
	}
}

// PipelineRead counts the events one read of the log returned.
func (m *Metrics) PipelineRead(events int) { m.pipelineRead.Add(float64(events)) }

// PipelineBatch observes a batch a batch consumer applied.
func (m *Metrics) PipelineBatch(consumer string, events int, d time.Duration) {
	m.batchEvents.WithLabelValues(consumer).Add(float64(events))
	m.batchDuration.WithLabelValues(consumer).Observe(d.Seconds())
}

func isConflict(err error) bool { return errors.Is(err, domain.ErrConcurrency) }

// Source is what the scrape-time collector reads.
type Source struct {
	Views *projections.Views
	// Log is the event log: head position and the time of an event.
	Log projections.EventLog
	// Consumers are the checkpoints of process managers (name → position).
	Consumers func(ctx context.Context) map[string]uint64
	// Dense is true when the store's positions are 1, 2, 3, … without
	// gaps (the embedded store): only then does a difference of positions
	// count events, and usersync_projection_lag_events and
	// usersync_views_behind_events are exported. On a store with gaps
	// (EventStoreDB) they are not: the *_seconds gauges say how far behind.
	Dense bool
	// Lag, if set, is how far the views are behind the head (the
	// pipeline's Lag), exported as usersync_views_behind_events (dense
	// only), usersync_views_behind_seconds, usersync_views_done_ratio and
	// usersync_views_caught_up.
	Lag func(ctx context.Context) (ViewsLag, error)
	// StoreKind ("file", "esdb") labels usersync_store_up; StoreUp, if set,
	// is its cheap check: nil when the store answers and takes appends.
	StoreKind string
	StoreUp   func(ctx context.Context) error
	Logger    *slog.Logger
}

// ViewsLag is how far the views are behind the log's head (see
// pipeline.Lag).
type ViewsLag struct {
	// Events left to apply: meaningful on a dense store only.
	Events uint64
	// Behind is the log time left to apply; Done the fraction of the
	// positions up to the head applied.
	Behind time.Duration
	Done   float64
	// CaughtUp is /readyz's decision on the views.
	CaughtUp bool
}

// Watch registers the collector that reads src at each scrape.
func (m *Metrics) Watch(src Source) {
	m.Registry.MustRegister(&stateCollector{src: src})
	for _, name := range src.Views.Names() {
		m.parkedTotal.WithLabelValues(name)
	}
	if src.Consumers != nil {
		for name := range src.Consumers(context.Background()) {
			m.parkedTotal.WithLabelValues(name)
		}
	}
}
