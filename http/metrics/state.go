package metrics

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/usersync/usersync/projections"
)

var (
	descHead = prometheus.NewDesc(ns+"_head_position", "Position of the last event in the event store.", nil, nil)
	descPos  = prometheus.NewDesc(ns+"_projection_position", "Checkpoint of each projection and process manager: the last event it handled.",
		[]string{"projection"}, nil)
	descLag = prometheus.NewDesc(ns+"_projection_lag_events", "Events each projection and process manager has still to handle (only on the embedded store, whose positions count events).",
		[]string{"projection"}, nil)
	descLagSeconds = prometheus.NewDesc(ns+"_projection_lag_seconds", "Age of the oldest event each projection and process manager has still to handle (0 when caught up).",
		[]string{"projection"}, nil)
	descParked  = prometheus.NewDesc(ns+"_parked_events", "Events parked now, by handler.", []string{"handler"}, nil)
	descReturns = prometheus.NewDesc(ns+"_password_returns", "Generated passwords by return status (pending, returned, failed).",
		[]string{"status"}, nil)
	descPendingAge   = prometheus.NewDesc(ns+"_password_return_oldest_pending_seconds", "Age of the oldest password still pending return (0 when none).", nil, nil)
	descUsers        = prometheus.NewDesc(ns+"_users", "Users in the users view.", nil, nil)
	descWebhooksOpen = prometheus.NewDesc(ns+"_webhooks_open", "Webhooks recorded and not yet finished (queued or retrying).", nil, nil)
	descRetrying     = prometheus.NewDesc(ns+"_webhooks_retrying", "Open webhooks waiting for FunnelKit: their last attempt failed because FunnelKit was unavailable (down, 5xx, a challenge page, refused credentials), and they are retried with backoff.", nil, nil)
	descRetryingAge  = prometheus.NewDesc(ns+"_webhooks_retrying_oldest_seconds", "Age (since it was received) of the oldest webhook waiting for FunnelKit (0 when none).", nil, nil)
	descBehind       = prometheus.NewDesc(ns+"_views_behind_events", "Events the view furthest behind has still to apply up to the head: while it is over the ready lag (1000), /readyz answers 503 \"views catching up\". Only on the embedded store, whose positions count events.", nil, nil)
	descBehindTime   = prometheus.NewDesc(ns+"_views_behind_seconds", "Log time the view furthest behind has still to apply: the recorded time of the head event minus that of the last event it applied (0 when caught up).", nil, nil)
	descDone         = prometheus.NewDesc(ns+"_views_done_ratio", "Fraction of the log's positions up to the head that the view furthest behind has applied (1 when caught up; with EventStoreDB a share of the log's bytes, not of its events).", nil, nil)
	descCaughtUp     = prometheus.NewDesc(ns+"_views_caught_up", "1 when the views count as caught up for /readyz, 0 while they catch up (\"views catching up\").", nil, nil)
	descStoreUp      = prometheus.NewDesc(ns+"_store_up", "1 when the event store answers a cheap check (and, for the embedded store, can take appends), else 0; kind is file or esdb.", []string{"kind"}, nil)
	descScrapeErrors = prometheus.NewDesc(ns+"_state_scrape_errors", "1 when the last scrape could not read part of the state.", nil, nil)
)

// stateCollector reads the state at each scrape: cheap reads of memory and
// one indexed read per lagging consumer.
type stateCollector struct{ src Source }

func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descHead, descPos, descLag, descLagSeconds, descParked, descReturns, descPendingAge, descUsers, descWebhooksOpen, descRetrying, descRetryingAge,
		descBehind, descBehindTime, descDone, descCaughtUp, descStoreUp, descScrapeErrors} {
		ch <- d
	}
}

func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	failed := 0.0
	head, err := c.src.Log.Head(ctx)
	if err != nil {
		failed = 1
		c.src.Logger.Warn("metrics: read head", "err", err)
	}
	ch <- prometheus.MustNewConstMetric(descHead, prometheus.GaugeValue, float64(head))
	if c.src.StoreUp != nil {
		up := 1.0
		if err := c.src.StoreUp(ctx); err != nil {
			up = 0
		}
		ch <- prometheus.MustNewConstMetric(descStoreUp, prometheus.GaugeValue, up, c.src.StoreKind)
	}
	if c.src.Lag != nil {
		if lag, err := c.src.Lag(ctx); err == nil {
			if c.src.Dense {
				ch <- prometheus.MustNewConstMetric(descBehind, prometheus.GaugeValue, float64(lag.Events))
			}
			caughtUp := 0.0
			if lag.CaughtUp {
				caughtUp = 1
			}
			ch <- prometheus.MustNewConstMetric(descBehindTime, prometheus.GaugeValue, lag.Behind.Seconds())
			ch <- prometheus.MustNewConstMetric(descDone, prometheus.GaugeValue, lag.Done)
			ch <- prometheus.MustNewConstMetric(descCaughtUp, prometheus.GaugeValue, caughtUp)
		}
	}
	positions := map[string]uint64{}
	for _, name := range c.src.Views.Names() {
		pos, _ := c.src.Views.Position(name)
		positions[name] = pos
	}
	if c.src.Consumers != nil {
		for name, pos := range c.src.Consumers(ctx) {
			positions[name] = pos
		}
	}
	for name, pos := range positions {
		lag := uint64(0)
		if head > pos {
			lag = head - pos
		}
		ch <- prometheus.MustNewConstMetric(descPos, prometheus.GaugeValue, float64(pos), name)
		if c.src.Dense {
			ch <- prometheus.MustNewConstMetric(descLag, prometheus.GaugeValue, float64(lag), name)
		}
		age := 0.0
		if lag > 0 {
			if next, err := c.src.Log.ReadAll(ctx, pos, 1); err == nil && len(next) == 1 {
				age = max(time.Since(next[0].RecordedAt).Seconds(), 0)
			}
		}
		ch <- prometheus.MustNewConstMetric(descLagSeconds, prometheus.GaugeValue, age, name)
	}
	parked, err := c.src.Views.Parked(ctx, "")
	if err != nil {
		failed = 1
	}
	byHandler := map[string]int{}
	for name := range positions {
		byHandler[name] = 0
	}
	for _, pe := range parked {
		byHandler[pe.Handler]++
	}
	for h, n := range byHandler {
		ch <- prometheus.MustNewConstMetric(descParked, prometheus.GaugeValue, float64(n), h)
	}
	summary, err := c.src.Views.Passwords.Summary(ctx)
	if err != nil {
		failed = 1
		summary.Counts = map[string]int{projections.PasswordPending: 0, projections.PasswordReturned: 0, projections.PasswordFailed: 0}
	}
	oldest := summary.OldestPending
	for s, n := range summary.Counts {
		ch <- prometheus.MustNewConstMetric(descReturns, prometheus.GaugeValue, float64(n), s)
	}
	age := 0.0
	if !oldest.IsZero() {
		age = max(time.Since(oldest).Seconds(), 0)
	}
	ch <- prometheus.MustNewConstMetric(descPendingAge, prometheus.GaugeValue, age)
	users, err := c.src.Views.Users.Count(ctx)
	if err != nil {
		failed = 1
	}
	ch <- prometheus.MustNewConstMetric(descUsers, prometheus.GaugeValue, float64(users))
	open, err := c.src.Views.Webhooks.Open(ctx)
	if err != nil {
		failed = 1
	}
	retrying, oldestRetrying := 0, time.Time{}
	for _, w := range open {
		if w.Status != projections.WebhookRetrying {
			continue
		}
		retrying++
		if oldestRetrying.IsZero() || w.ReceivedAt.Before(oldestRetrying) {
			oldestRetrying = w.ReceivedAt
		}
	}
	retryingAge := 0.0
	if !oldestRetrying.IsZero() {
		retryingAge = max(time.Since(oldestRetrying).Seconds(), 0)
	}
	ch <- prometheus.MustNewConstMetric(descWebhooksOpen, prometheus.GaugeValue, float64(len(open)))
	ch <- prometheus.MustNewConstMetric(descRetrying, prometheus.GaugeValue, float64(retrying))
	ch <- prometheus.MustNewConstMetric(descRetryingAge, prometheus.GaugeValue, retryingAge)
	ch <- prometheus.MustNewConstMetric(descScrapeErrors, prometheus.GaugeValue, failed)
}
