package projections

import (
	"context"
	"fmt"
	"strings"
	"time"

	json "github.com/goccy/go-json"

	"github.com/usersync/usersync/domain"
	"github.com/usersync/usersync/eventstore"
)

// TimelineEntry is one event of a contact's timeline, in words, with the
// webhook that caused it and what it changed in the user's meta. Its JSON
// is what usersync history --json prints (and the console shows).
type TimelineEntry struct {
	Position uint64    `json:"position"`
	Version  uint64    `json:"version"`
	Type     string    `json:"type"`
	At       time.Time `json:"at"`
	// Words is the event in words (domain.Describe).
	Words string `json:"words"`
	// Webhook is the webhook that caused the event, nil for events a
	// process caused on its own.
	Webhook *TimelineWebhook `json:"webhook,omitempty"`
	// MetaDiff is what the event changed in the user's meta (before in
	// Old, after in New).
	MetaDiff []domain.MetaChange `json:"meta_diff,omitempty"`
	// Data is the event's JSON with its secrets (password hash, sealed
	// password) replaced by "[redacted]"; nil if it could not be decoded.
	Data json.RawMessage `json:"data,omitempty"`
	// Error says why the event could not be read (a newer schema, an
	// unknown type); Words then names its type only.
	Error string `json:"error,omitempty"`
}

// TimelineWebhook is the webhook that caused an event: what FunnelKit sent
// (minus its secrets) and how it ended.
type TimelineWebhook struct {
	ID     string `json:"id"`
	Action string `json:"action,omitempty"`
	Method string `json:"method,omitempty"`
	Source string `json:"source,omitempty"`
	// Params are the parameters sent, without any secret-looking one
	// (access_key, tokens, passwords).
	Params     map[string]string `json:"params,omitempty"`
	ReceivedAt time.Time         `json:"received_at,omitzero"`
	// Outcome is queued, retrying, processed, ignored, failed, or unknown
	// when neither the page nor the receipts know it.
	Outcome string `json:"outcome"`
	// Message is the outcome's message or reason.
	Message string `json:"message,omitempty"`
}

// TimelinePage is a page of a contact's timeline, newest first.
type TimelinePage struct {
	ContactID domain.ContactID `json:"contact_id"`
	Entries   []TimelineEntry  `json:"entries"`
	// Next is the cursor of the next (older) page: pass it as before. 0
	// when this page reaches the first event.
	Next uint64 `json:"next,omitempty"`
}

// Receipts is what the timeline asks of the webhooks view to describe a
// webhook whose events are not on the page (*Webhooks is one).
type Receipts interface {
	Get(ctx context.Context, id string) (Webhook, bool, error)
	Locate(ctx context.Context, id string) (stream string, version uint64, ok bool, err error)
}

// MaxTimelinePage is the most events one timeline page holds.
const MaxTimelinePage = 1000

// Timeline reads one page of the timeline of contact id: at most limit
// events with version < before (before 0: from the newest), newest first.
// Its cost is that of the page, whatever the stream's length: one bounded
// read of the stream, and for each webhook the page names but does not
// hold, one receipt and one event. receipts may be nil (webhooks are then
// described from the page's events only).
func Timeline(ctx context.Context, log domain.EventStore, receipts Receipts, id domain.ContactID, before uint64, limit int) (TimelinePage, error) {
	if limit <= 0 || limit > MaxTimelinePage {
		return TimelinePage{}, fmt.Errorf("timeline of contact %d: limit %d must be 1 to %d", id, limit, MaxTimelinePage)
	}
	recs, err := eventstore.ReadStreamBackward(ctx, log, id.Stream(), before, limit)
	if err != nil {
		return TimelinePage{}, fmt.Errorf("timeline of contact %d: %w", id, err)
	}
	page := TimelinePage{ContactID: id, Entries: make([]TimelineEntry, 0, len(recs))}
	hooks := map[string]*TimelineWebhook{}
	envs := make([]domain.Envelope, len(recs))
	// Oldest first, so that a webhook's outcome overrides its receipt.
	for i := len(recs) - 1; i >= 0; i-- {
		env, err := domain.Decode(recs[i])
		if err != nil {
			continue
		}
		envs[i] = env
		noteWebhook(hooks, env.Event)
	}
	for i, rec := range recs {
		e := TimelineEntry{Position: rec.Position, Version: rec.Version, Type: rec.Type, At: rec.RecordedAt.UTC()}
		env := envs[i]
		if env.Event == nil {
			if _, err := domain.Decode(rec); err != nil {
				e.Error = err.Error()
			}
			e.Words = rec.Type + " (this build cannot read it)"
			page.Entries = append(page.Entries, e)
			continue
		}
		if !env.OccurredAt.IsZero() {
			e.At = env.OccurredAt.UTC()
		}
		e.Words = domain.Describe(env.Event)
		e.MetaDiff = domain.MetaDiff(env.Event)
		e.Data = redactData(rec.Data)
		if wid := env.WebhookID; wid != "" {
			w, err := webhookOf(ctx, log, receipts, hooks, wid)
			if err != nil {
				return TimelinePage{}, fmt.Errorf("timeline of contact %d: webhook %s: %w", id, domain.Truncate(wid, 60), err)
			}
			e.Webhook = w
		}
		page.Entries = append(page.Entries, e)
	}
	if n := len(recs); n == limit && recs[n-1].Version > 1 {
		page.Next = recs[n-1].Version
	}
	return page, nil
}

// noteWebhook folds a webhook event into what the page knows of webhooks.
func noteWebhook(hooks map[string]*TimelineWebhook, ev domain.Event) {
	get := func(id string) *TimelineWebhook {
		w := hooks[id]
		if w == nil {
			w = &TimelineWebhook{ID: id, Outcome: "unknown"}
			hooks[id] = w
		}
		return w
	}
	switch e := ev.(type) {
	case domain.WebhookReceived:
		w := get(e.WebhookID)
		w.Action, w.Method, w.Source, w.Params, w.ReceivedAt = e.Action, e.Method, e.Source, publicParams(e.Params), e.ReceivedAt.UTC()
		if w.Outcome == "unknown" {
			w.Outcome = WebhookQueued
		}
	case domain.WebhookRetrying:
		w := get(e.WebhookID)
		w.Outcome, w.Message = WebhookRetrying, e.Error
	case domain.WebhookProcessed:
		w := get(e.WebhookID)
		w.Outcome, w.Message = WebhookProcessed, e.Message
		if w.Action == "" {
			w.Action = e.Action
		}
	case domain.WebhookIgnored:
		w := get(e.WebhookID)
		w.Outcome, w.Message = WebhookIgnored, e.Reason
	case domain.WebhookFailed:
		w := get(e.WebhookID)
		w.Outcome, w.Message = WebhookFailed, e.Reason
	}
}

// webhookOf describes webhook id: from the page's events, completed from
// the receipts view and the webhook's WebhookReceived in the log.
func webhookOf(ctx context.Context, log domain.EventStore, receipts Receipts, hooks map[string]*TimelineWebhook, id string) (*TimelineWebhook, error) {
	w := hooks[id]
	if w != nil && w.Method != "" && w.Outcome != WebhookQueued && w.Outcome != WebhookRetrying {
		return w, nil
	}
	if w == nil {
		w = &TimelineWebhook{ID: id, Outcome: "unknown"}
		hooks[id] = w
	}
	if receipts == nil {
		return w, nil
	}
	if r, ok, err := receipts.Get(ctx, id); err != nil {
		return nil, err
	} else if ok {
		w.Action, w.Outcome, w.Message, w.ReceivedAt = r.Action, r.Status, r.Message, r.ReceivedAt
	}
	if w.Method != "" {
		return w, nil
	}
	stream, version, ok, err := receipts.Locate(ctx, id)
	if err != nil || !ok {
		return w, err
	}
	recs, err := eventstore.ReadStreamBackward(ctx, log, stream, version+1, 1)
	if err != nil {
		return nil, err
	}
	if len(recs) == 1 {
		if env, err := domain.Decode(recs[0]); err == nil {
			if e, ok := env.Event.(domain.WebhookReceived); ok && e.WebhookID == id {
				w.Action, w.Method, w.Source, w.Params, w.ReceivedAt = e.Action, e.Method, e.Source, publicParams(e.Params), e.ReceivedAt.UTC()
			}
		}
	}
	return w, nil
}

// secretWords mark a parameter name as a secret (in any case), as the
// webhook port does when it records a webhook: "key" covers access_key.
var secretWords = [...]string{"pass", "secret", "token", "key"}

// publicParams are params without the secret-looking ones. The port
// never records those; a timeline makes sure.
func publicParams(params map[string]string) map[string]string {
	if len(params) == 0 {
		return nil
	}
	out := make(map[string]string, len(params))
	for k, v := range params {
		secret := false
		for _, w := range secretWords {
			secret = secret || strings.Contains(strings.ToLower(k), w)
		}
		if !secret {
			out[k] = v
		}
	}
	return out
}

// redactedFields are replaced in an event's JSON: a password hash or a
// sealed password is of no use to a reader of the audit trail.
var redactedFields = [...]string{"password_hash", "sealed"}

// redactData is an event's JSON with its secret fields redacted, nil if
// it is not a JSON object.
func redactData(data []byte) json.RawMessage {
	var fields map[string]json.RawMessage
	if json.Unmarshal(data, &fields) != nil {
		return nil
	}
	changed := false
	if raw, ok := fields["params"]; ok {
		var params map[string]string
		if json.Unmarshal(raw, &params) == nil {
			if public := publicParams(params); len(public) < len(params) {
				if b, err := json.Marshal(public); err == nil {
					fields["params"], changed = b, true
				}
			}
		}
	}
	for _, f := range redactedFields {
		if _, ok := fields[f]; ok {
			fields[f] = json.RawMessage(`"[redacted]"`)
			changed = true
		}
	}
	if !changed {
		return json.RawMessage(data)
	}
	b, err := json.Marshal(fields)
	if err != nil {
		return nil
	}
	return b
}
