package projections

import (
	"cmp"
	"context"
	"database/sql"
	"fmt"
	"slices"
	"time"

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

type webhooksState struct {
	rows  map[string]*Webhook
	dirty map[string]struct{}
}

func newWebhooksState() *webhooksState {
	return &webhooksState{rows: map[string]*Webhook{}, dirty: map[string]struct{}{}}
}

func (s *webhooksState) apply(rec domain.RecordedEvent, env domain.Envelope) {
	at := env.OccurredAt
	var id string
	switch e := env.Event.(type) {
	case domain.WebhookReceived:
		id = e.WebhookID
		contact, _ := domain.ParseContactID(e.ContactID)
		s.rows[id] = &Webhook{ID: id, Action: e.Action, ContactID: contact, Status: WebhookQueued, ReceivedAt: e.ReceivedAt, UpdatedAt: at}
	case domain.WebhookRetrying:
		id = e.WebhookID
		s.update(id, WebhookRetrying, e.Error, at).Attempts = e.Attempt
	case domain.WebhookProcessed:
		id = e.WebhookID
		s.update(id, WebhookProcessed, e.Message, at)
	case domain.WebhookIgnored:
		id = e.WebhookID
		s.update(id, WebhookIgnored, e.Reason, at)
	case domain.WebhookFailed:
		id = e.WebhookID
		s.update(id, WebhookFailed, e.Reason, at)
	default:
		return
	}
	s.dirty[id] = struct{}{}
}

// update changes a webhook's status; an outcome for a webhook the view never
// saw received still gets a row, so nothing recorded is invisible.
func (s *webhooksState) update(id, status, message string, at time.Time) *Webhook {
	w := s.rows[id]
	if w == nil {
		w = &Webhook{ID: id, ReceivedAt: at}
		s.rows[id] = w
	}
	w.Status, w.Message, w.UpdatedAt = status, message, at
	return w
}

const upsertWebhook = `INSERT INTO webhooks(id, action, contact_id, status, message, attempts, received_at, updated_at)
	VALUES(?, ?, ?, ?, ?, ?, ?, ?)
	ON CONFLICT(id) DO UPDATE SET action=excluded.action, contact_id=excluded.contact_id, status=excluded.status,
	message=excluded.message, attempts=excluded.attempts, received_at=excluded.received_at, updated_at=excluded.updated_at`

func (s *webhooksState) write(ctx context.Context, tx *sql.Tx, ids func(yield func(string) bool)) error {
	stmt, err := tx.PrepareContext(ctx, upsertWebhook)
	if err != nil {
		return err
	}
	defer stmt.Close()
	for id := range ids {
		w := s.rows[id]
		if _, err := stmt.ExecContext(ctx, id, w.Action, int64(w.ContactID), w.Status, w.Message, w.Attempts,
			unixNano(w.ReceivedAt), unixNano(w.UpdatedAt)); err != nil {
			return fmt.Errorf("write webhook %s: %w", id, err)
		}
	}
	return nil
}

func (s *webhooksState) flush(ctx context.Context, tx *sql.Tx) error {
	if len(s.dirty) == 0 {
		return nil
	}
	if err := s.write(ctx, tx, mapKeys(s.dirty)); err != nil {
		return err
	}
	clear(s.dirty)
	return nil
}

func (s *webhooksState) replace(ctx context.Context, tx *sql.Tx) error {
	if _, err := tx.ExecContext(ctx, "DELETE FROM webhooks"); err != nil {
		return err
	}
	if err := s.write(ctx, tx, mapKeys(s.rows)); err != nil {
		return err
	}
	clear(s.dirty)
	return nil
}

func (s *webhooksState) load(ctx context.Context, db *sql.DB) error {
	rows, err := db.QueryContext(ctx, `SELECT id, action, contact_id, status, message, attempts, received_at, updated_at FROM webhooks`)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		var w Webhook
		var contact, received, updated int64
		if err := rows.Scan(&w.ID, &w.Action, &contact, &w.Status, &w.Message, &w.Attempts, &received, &updated); err != nil {
			return err
		}
		w.ContactID = domain.ContactID(contact)
		w.ReceivedAt, w.UpdatedAt = fromUnixNano(received), fromUnixNano(updated)
		s.rows[w.ID] = &w
	}
	return rows.Err()
}

// Get returns a webhook's receipt.
func (v *Webhooks) Get(id string) (Webhook, bool) {
	v.p.mu.RLock()
	defer v.p.mu.RUnlock()
	w, ok := v.p.st.(*webhooksState).rows[id]
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
	for _, w := range v.p.st.(*webhooksState).rows {
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
	out := make([]Webhook, 0, len(v.p.st.(*webhooksState).rows))
	for _, w := range v.p.st.(*webhooksState).rows {
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
