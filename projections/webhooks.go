package projections

import (
	"cmp"
	"context"
	"database/sql"
	"slices"
	"strconv"
	"time"

	json "github.com/goccy/go-json"

	"github.com/usersync/usersync/domain"
)

// Webhook statuses.
const (
	WebhookQueued    = "queued"
	WebhookRetrying  = "retrying"
	WebhookProcessed = "processed"
	WebhookIgnored   = "ignored"
	WebhookFailed    = "failed"
)

// Webhook is a row of the webhooks view: a webhook's receipt. Its JSON is
// the API's receipt.
type Webhook struct {
	ID         string           `json:"id"`
	Action     string           `json:"action"`
	ContactID  domain.ContactID `json:"contact_id"`
	Status     string           `json:"status"`
	Message    string           `json:"message"`
	Attempts   int              `json:"attempts"`
	ReceivedAt time.Time        `json:"received_at"`
	UpdatedAt  time.Time        `json:"updated_at"`
}

// Webhooks is the webhooks view: every webhook received and where it stands.
type Webhooks struct{ p *projection }

// storedWebhook is a receipt as written: a JSON array, since there is one
// per webhook ever received and field names would double the file.
type storedWebhook struct {
	ID         string
	Action     string
	ContactID  domain.ContactID
	Status     string
	Message    string
	Attempts   int
	ReceivedAt int64
	UpdatedAt  int64
}

// appendJSON appends the array form.
func (w storedWebhook) appendJSON(b []byte) []byte {
	b = append(b, '[')
	b = appendJSONString(b, w.ID)
	b = append(b, ',')
	b = appendJSONString(b, w.Action)
	b = append(b, ',')
	b = strconv.AppendUint(b, uint64(w.ContactID), 10)
	b = append(b, ',')
	b = appendJSONString(b, w.Status)
	b = append(b, ',')
	b = appendJSONString(b, w.Message)
	b = append(b, ',')
	b = strconv.AppendInt(b, int64(w.Attempts), 10)
	b = append(b, ',')
	b = strconv.AppendInt(b, w.ReceivedAt, 10)
	b = append(b, ',')
	b = strconv.AppendInt(b, w.UpdatedAt, 10)
	return append(b, ']')
}

// UnmarshalJSON reads the array form.
func (w *storedWebhook) UnmarshalJSON(b []byte) error {
	return json.Unmarshal(b, &[]any{&w.ID, &w.Action, &w.ContactID, &w.Status, &w.Message, &w.Attempts, &w.ReceivedAt, &w.UpdatedAt})
}

type webhooksState struct {
	rows *buckets[string, *Webhook]
}

func newWebhooksState(size int) *webhooksState {
	return &webhooksState{rows: newBuckets("webhooks", 4096, size, hashString,
		func(b []byte, _ string, w *Webhook) ([]byte, error) {
			st := storedWebhook{w.ID, w.Action, w.ContactID, w.Status, w.Message, w.Attempts, unixNano(w.ReceivedAt), unixNano(w.UpdatedAt)}
			return st.appendJSON(b), nil
		},
		func(raw json.RawMessage) (string, *Webhook, error) {
			var st storedWebhook
			if err := json.Unmarshal(raw, &st); err != nil {
				return "", nil, err
			}
			w := &Webhook{ID: st.ID, Action: st.Action, ContactID: st.ContactID, Status: st.Status, Message: st.Message,
				Attempts: st.Attempts, ReceivedAt: fromUnixNano(st.ReceivedAt), UpdatedAt: fromUnixNano(st.UpdatedAt)}
			return w.ID, w, nil
		})}
}

func (s *webhooksState) apply(rec *domain.RecordedEvent, env *domain.Envelope) {
	at := env.OccurredAt.UTC()
	switch e := env.Event.(type) {
	case domain.WebhookReceived:
		contact, _ := domain.ParseContactID(e.ContactID)
		s.rows.put(e.WebhookID, &Webhook{ID: e.WebhookID, Action: e.Action, ContactID: contact, Status: WebhookQueued, ReceivedAt: e.ReceivedAt.UTC(), UpdatedAt: at})
	case domain.WebhookRetrying:
		s.update(e.WebhookID, WebhookRetrying, e.Error, at).Attempts = e.Attempt
	case domain.WebhookProcessed:
		s.update(e.WebhookID, WebhookProcessed, e.Message, at)
	case domain.WebhookIgnored:
		s.update(e.WebhookID, WebhookIgnored, e.Reason, at)
	case domain.WebhookFailed:
		s.update(e.WebhookID, WebhookFailed, e.Reason, at)
	}
}

// update changes a webhook's status; an outcome for a webhook the view never
// saw received still gets a row, so nothing recorded is invisible.
func (s *webhooksState) update(id, status, message string, at time.Time) *Webhook {
	w, ok := s.rows.get(id)
	if !ok {
		w = &Webhook{ID: id, ReceivedAt: at}
		s.rows.put(id, w)
	}
	w.Status, w.Message, w.UpdatedAt = status, message, at
	s.rows.touch(id)
	return w
}

func (s *webhooksState) size() int                                   { return len(s.rows.rows) }
func (s *webhooksState) committed()                                  { s.rows.committed() }
func (s *webhooksState) sums() map[uint32]sum                        { return s.rows.sums() }
func (s *webhooksState) flush(ctx context.Context, tx *sql.Tx) error { return s.rows.flush(ctx, tx) }
func (s *webhooksState) encodeAll(part, parts uint32, inFile map[uint32]sum, out chan<- encoded, free <-chan []byte) error {
	return s.rows.encodeAll(part, parts, inFile, out, free)
}
func (s *webhooksState) load(ctx context.Context, db *sql.DB) error { return s.rows.loadAll(ctx, db) }

// Get returns a webhook's receipt.
func (v *Webhooks) Get(id string) (Webhook, bool) {
	v.p.mu.RLock()
	defer v.p.mu.RUnlock()
	w, ok := v.p.st.(*webhooksState).rows.get(id)
	if !ok {
		return Webhook{}, false
	}
	return *w, true
}

// Open returns the webhooks not yet closed (queued or retrying), oldest first.
func (v *Webhooks) Open() []Webhook {
	v.p.mu.RLock()
	defer v.p.mu.RUnlock()
	var out []Webhook
	for _, w := range v.p.st.(*webhooksState).rows.rows {
		if w.Status == WebhookQueued || w.Status == WebhookRetrying {
			out = append(out, *w)
		}
	}
	sortWebhooks(out)
	return out
}

// All returns every webhook, oldest first.
func (v *Webhooks) All() []Webhook {
	v.p.mu.RLock()
	defer v.p.mu.RUnlock()
	out := make([]Webhook, 0, len(v.p.st.(*webhooksState).rows.rows))
	for _, w := range v.p.st.(*webhooksState).rows.rows {
		out = append(out, *w)
	}
	sortWebhooks(out)
	return out
}

func sortWebhooks(ws []Webhook) {
	slices.SortFunc(ws, func(a, b Webhook) int {
		if c := a.ReceivedAt.Compare(b.ReceivedAt); c != 0 {
			return c
		}
		return cmp.Compare(a.ID, b.ID)
	})
}
