package http

import (
	"context"
	"log/slog"
	nethttp "net/http"
	"time"

	"github.com/usersync/usersync/domain"
	"github.com/usersync/usersync/domain/command"
)

// Decorator wraps a handler with a concern of its own (logging, metrics),
// as promhttp's middleware does.
type Decorator func(nethttp.Handler) nethttp.Handler

// Outcomes a WebhookReport has beside a processing outcome's status.
const (
	outcomeRejected = "rejected"
	outcomeIgnored  = "ignored"
	outcomeQueued   = "queued"
	outcomeFailed   = "failed"
	outcomeTest     = "test"
)

// WebhookReport is what the webhook handler found out about one webhook,
// for the decorators around it. The handler fills the report it finds in
// the request's context (see Report) and writes neither log line nor
// metric itself.
type WebhookReport struct {
	// Action is none until the access key is checked, then the normalised
	// wpf_action (add, update, update_tags, test) or unknown.
	Action string
	// Outcome is how the webhook ended, as logged: rejected, ignored,
	// test, queued, failed (not recorded, with Err) or, with Processed,
	// the processing outcome's status (processed, ignored, failed,
	// retrying).
	Outcome string
	// Status is the HTTP status answered; 0 when no answer was written
	// (the sender went away).
	Status int
	// Reason is why the webhook was refused, rejected, ignored or queued.
	Reason string
	// Processed is set when the webhook was processed within the wait:
	// Outcome and Message are then the processing outcome's.
	Processed bool
	Message   string
	// WebhookID is empty when the webhook was refused before it got one
	// (unreadable, no wpf_action, wrong access key): nothing else is
	// known of such a webhook, and nothing else of it is logged.
	WebhookID string
	// ContactID is 0 until the contact id is read.
	ContactID domain.ContactID
	// Err is why the webhook could not be recorded (answered 500).
	Err error
	// Refused is why the webhook was refused before it was authenticated
	// (RefusedUnreadable, RefusedNoAction, RefusedWrongSecret,
	// RefusedThrottled); empty otherwise.
	Refused string
}

type reportKey struct{}

// Report returns the webhook report of r's context. When it has none, it
// adds a new one (action none, outcome rejected, as for a webhook refused
// at once) to the context of the request it returns: the first decorator
// makes the report, the others and the handler share it.
func Report(r *nethttp.Request) (*nethttp.Request, *WebhookReport) {
	if rep, ok := r.Context().Value(reportKey{}).(*WebhookReport); ok {
		return r, rep
	}
	rep := &WebhookReport{Action: "none", Outcome: outcomeRejected}
	return r.WithContext(context.WithValue(r.Context(), reportKey{}, rep)), rep
}

// ObserveWebhooks is the decorator that tells observe each webhook's
// action, outcome and duration once it is answered, with the outcomes of
// the webhooks metric (usersync_webhooks_total): a test counts as
// processed, a webhook retrying as queued.
func ObserveWebhooks(observe func(action, outcome string, d time.Duration)) Decorator {
	return func(next nethttp.Handler) nethttp.Handler {
		return nethttp.HandlerFunc(func(w nethttp.ResponseWriter, r *nethttp.Request) {
			start := time.Now()
			r, rep := Report(r)
			defer func() { observe(rep.Action, metricOutcome(rep.Outcome), time.Since(start)) }()
			next.ServeHTTP(w, r)
		})
	}
}

// metricOutcome is the webhooks metric's outcome for a report's outcome.
func metricOutcome(outcome string) string {
	switch outcome {
	case outcomeTest:
		return command.StatusProcessed
	case command.StatusRetrying:
		return outcomeQueued
	}
	return outcome
}

// logWebhooks is the decorator that writes each webhook's one "webhook"
// log line once it is answered (or the "record webhook" error line when it
// could not be recorded). A webhook refused before it got an id is counted
// with refused (by its reason) and logged through refusedLog, which bounds
// such lines (nil: every one is logged), without its parameters (the
// access key may be among them) and without the query string: with the
// method and the sender's address only.
func logWebhooks(log *slog.Logger, refusedLog *refusedLog, refused func(endpoint, reason string)) Decorator {
	info := log.Info
	if refusedLog != nil {
		info = refusedLog.Info
	}
	return func(next nethttp.Handler) nethttp.Handler {
		return nethttp.HandlerFunc(func(w nethttp.ResponseWriter, r *nethttp.Request) {
			start := time.Now()
			r, rep := Report(r)
			next.ServeHTTP(w, r)
			if rep.WebhookID == "" {
				if rep.Refused != "" && refused != nil {
					refused(EndpointWebhook, rep.Refused)
				}
				info("webhook", "outcome", rep.Outcome, "status", rep.Status, "reason", rep.Reason, "method", r.Method,
					"source", remoteHost(r), "duration_seconds", time.Since(start).Seconds())
				return
			}
			// Typed attributes in an array on the stack: one line per
			// webhook, so the line costs no allocation of its own.
			var buf [8]slog.Attr
			attrs := append(buf[:0], slog.String("webhook_id", rep.WebhookID), slog.String("action", rep.Action))
			if rep.ContactID != 0 {
				attrs = append(attrs, slog.Any("contact_id", rep.ContactID))
			}
			if rep.Err != nil {
				log.LogAttrs(r.Context(), slog.LevelError, "record webhook", append(attrs, slog.Any("err", rep.Err))...)
				return
			}
			attrs = append(attrs, slog.String("outcome", rep.Outcome))
			if rep.Outcome != outcomeTest && rep.Outcome != outcomeQueued {
				attrs = append(attrs, slog.Int("status", rep.Status))
			}
			switch {
			case rep.Processed:
				attrs = append(attrs, slog.String("message", rep.Message))
			case rep.Reason != "":
				attrs = append(attrs, slog.String("reason", rep.Reason))
			}
			log.LogAttrs(r.Context(), slog.LevelInfo, "webhook", append(attrs, slog.Float64("duration_seconds", time.Since(start).Seconds()))...)
		})
	}
}
