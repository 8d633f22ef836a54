package projections

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"strings"
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

// open says whether the webhook still waits for an outcome.
func (w *Webhook) open() bool { return w.Status == WebhookQueued || w.Status == WebhookRetrying }

// Webhooks is the webhooks view: the receipts of the webhooks received
// within the retention (every open one whenever received), in table
// webhooks, and where each webhook ever received is in the log, in table
// webhook_log, which is never pruned.
type Webhooks struct{ v *Views }

type webhookSlot struct {
	w      *Webhook
	inFile bool
	dirty  bool
}

// webhookLogRow is where a webhook's WebhookReceived is in the log.
type webhookLogRow struct {
	id, stream string
	version    uint64
	receivedAt int64
}

const webhookColumns = "id, action, contact_id, status, message, attempts, received_at, updated_at"

var webhookUpsert = upsertSet("id", webhookColumns)

func scanWebhook(row scanner) (Webhook, error) {
	var w Webhook
	var contact, received, updated int64
	if err := row.Scan(&w.ID, &w.Action, &contact, &w.Status, &w.Message, &w.Attempts, &received, &updated); err != nil {
		return Webhook{}, err
	}
	w.ContactID, w.ReceivedAt, w.UpdatedAt = domain.ContactID(contact), fromUnixNano(received), fromUnixNano(updated)
	return w, nil
}

// webhook is the receipt of id; load false skips reading it (it is about to
// be replaced).
func (b *batch) webhook(id string, load bool) (*webhookSlot, error) {
	if s, ok := b.webhooks[id]; ok {
		return s, nil
	}
	s := &webhookSlot{}
	b.webhooks[id] = s
	b.rows++
	if !load || !b.mayExistWebhook(id) {
		return s, nil
	}
	row, err := b.queryRow("SELECT "+webhookColumns+" FROM webhooks WHERE id = ?", id)
	if err != nil {
		return nil, err
	}
	w, err := scanWebhook(row)
	switch {
	case errors.Is(err, sql.ErrNoRows):
	case err != nil:
		return nil, fmt.Errorf("read receipt %s: %w", id, err)
	default:
		s.w, s.inFile = &w, true
	}
	return s, nil
}

func (b *batch) applyWebhook(rec *domain.RecordedEvent, env *domain.Envelope) error {
	at := env.OccurredAt.UTC()
	switch e := env.Event.(type) {
	case domain.WebhookReceived:
		s, err := b.webhook(e.WebhookID, false)
		if err != nil {
			return err
		}
		contact, _ := domain.ParseContactID(e.ContactID)
		s.w = &Webhook{ID: e.WebhookID, Action: e.Action, ContactID: contact, Status: WebhookQueued, ReceivedAt: e.ReceivedAt.UTC(), UpdatedAt: at}
		s.dirty = true
		b.webhookLog = append(b.webhookLog, webhookLogRow{id: e.WebhookID, stream: rec.Stream, version: rec.Version, receivedAt: unixNano(s.w.ReceivedAt)})
	case domain.WebhookRetrying:
		w, err := b.updateWebhook(e.WebhookID, WebhookRetrying, e.Error, at)
		if err != nil {
			return err
		}
		w.Attempts = e.Attempt
	case domain.WebhookProcessed:
		_, err := b.updateWebhook(e.WebhookID, WebhookProcessed, e.Message, at)
		return err
	case domain.WebhookIgnored:
		_, err := b.updateWebhook(e.WebhookID, WebhookIgnored, e.Reason, at)
		return err
	case domain.WebhookFailed:
		_, err := b.updateWebhook(e.WebhookID, WebhookFailed, e.Reason, at)
		return err
	}
	return nil
}

// updateWebhook changes a webhook's status. An outcome for a webhook the
// view has no receipt of still gets one, so nothing recorded is invisible:
// received when the log index says (the receipt was pruned), else at.
func (b *batch) updateWebhook(id, status, message string, at time.Time) (*Webhook, error) {
	s, err := b.webhook(id, true)
	if err != nil {
		return nil, err
	}
	if s.w == nil {
		received := at
		if b.mayExistWebhook(id) {
			var n int64
			row, err := b.queryRow("SELECT received_at FROM webhook_log WHERE id = ?", id)
			if err != nil {
				return nil, err
			}
			switch err := row.Scan(&n); {
			case errors.Is(err, sql.ErrNoRows):
			case err != nil:
				return nil, fmt.Errorf("read log index of %s: %w", id, err)
			default:
				received = fromUnixNano(n)
			}
		}
		s.w = &Webhook{ID: id, ReceivedAt: received}
	}
	s.w.Status, s.w.Message, s.w.UpdatedAt = status, message, at
	s.dirty = true
	return s.w, nil
}

func (b *batch) flushWebhooks() error {
	slices.SortFunc(b.webhookLog, func(x, y webhookLogRow) int { return strings.Compare(x.id, y.id) })
	logArgs := make([]any, 0, 4*len(b.webhookLog))
	for _, r := range b.webhookLog {
		logArgs = append(logArgs, r.id, r.stream, int64(r.version), r.receivedAt)
		b.wroteWebhook(r.id)
	}
	if err := b.insertMany("INSERT OR IGNORE INTO webhook_log(id, stream, version, received_at) VALUES", 4, logArgs, ""); err != nil {
		return err
	}
	ids := make([]string, 0, len(b.webhooks))
	for id, s := range b.webhooks {
		if s.dirty {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	args := make([]any, 0, 8*len(ids))
	for _, id := range ids {
		s := b.webhooks[id]
		w := s.w
		if b.cutoff != 0 && !w.open() && unixNano(w.ReceivedAt) < b.cutoff {
			// Past the retention: the log has it.
			if s.inFile {
				if err := b.exec("DELETE FROM webhooks WHERE id = ?", id); err != nil {
					return err
				}
			}
			continue
		}
		args = append(args, id, w.Action, int64(w.ContactID), w.Status, w.Message, w.Attempts, unixNano(w.ReceivedAt), unixNano(w.UpdatedAt))
		b.wroteWebhook(id)
	}
	return b.insertMany("INSERT INTO webhooks("+webhookColumns+") VALUES", 8, args, webhookUpsert)
}

// pruneBatch is how many receipts one prune step deletes at most.
const pruneBatch = 256

// prune deletes up to limit closed receipts received before the cutoff,
// oldest first, and says how many it deleted.
func (b *batch) prune(limit int) (int, error) {
	st, err := b.stmt(`DELETE FROM webhooks WHERE id IN (SELECT id FROM webhooks INDEXED BY webhooks_by_received
		WHERE received_at < ? AND status NOT IN ('queued', 'retrying') ORDER BY received_at LIMIT ?)`)
	if err != nil {
		return 0, err
	}
	res, err := st.ExecContext(b.ctx, b.cutoff, limit)
	if err != nil {
		return 0, fmt.Errorf("prune receipts: %w", err)
	}
	n, err := res.RowsAffected()
	return int(n), err
}

// cutoff is the retention's edge now (Unix nanoseconds), 0 when every
// receipt is kept.
func (v *Views) cutoff() int64 {
	if v.retention == 0 {
		return 0
	}
	return v.now().Add(-v.retention).UnixNano()
}

// Prune deletes closed receipts older than the retention, in steps of a few
// hundred receipts (one transaction each, so batches of events go on in
// between), up to maxSteps steps; it says how many it deleted.
func (v *Views) Prune(ctx context.Context, maxSteps int) (int, error) {
	total := 0
	for range maxSteps {
		n, err := v.pruneStep(ctx)
		total += n
		if err != nil || n < pruneBatch {
			return total, err
		}
	}
	return total, nil
}

func (v *Views) pruneStep(ctx context.Context) (int, error) {
	cutoff := v.cutoff()
	if cutoff == 0 {
		return 0, nil
	}
	v.applyMu.Lock()
	defer v.applyMu.Unlock()
	v.dbMu.RLock()
	defer v.dbMu.RUnlock()
	tx, err := v.db.BeginTx(ctx, nil)
	if err != nil {
		return 0, fmt.Errorf("prune receipts: %w", err)
	}
	defer tx.Rollback()
	n, err := newBatch(ctx, tx, v.live, cutoff).prune(pruneBatch)
	if err != nil {
		return 0, err
	}
	return n, tx.Commit()
}

// pruneEvery is how often the views prune receipts past the retention when
// no batch of events does.
const pruneEvery = time.Minute

func (v *Views) pruneLoop() {
	defer close(v.pruneDone)
	if v.retention == 0 {
		return
	}
	t := time.NewTicker(pruneEvery)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			if _, err := v.Prune(ctx, 100); err != nil {
				v.log.Warn("prune webhook receipts past the retention (tried again in a minute)", "err", err)
			}
			cancel()
		case <-v.stopPrune:
			return
		}
	}
}

// Get returns a webhook's receipt, if the view keeps it (see Locate for one
// past the retention).
func (v *Webhooks) Get(ctx context.Context, id string) (Webhook, bool, error) {
	var w Webhook
	err := v.v.read(func(db *sql.DB) error {
		var err error
		w, err = scanWebhook(db.QueryRowContext(ctx, "SELECT "+webhookColumns+" FROM webhooks WHERE id = ?", id))
		return err
	})
	if errors.Is(err, sql.ErrNoRows) {
		return Webhook{}, false, nil
	}
	if err != nil {
		return Webhook{}, false, fmt.Errorf("read receipt %s: %w", id, err)
	}
	return w, true, nil
}

// Locate says where a webhook's WebhookReceived is in the log: its stream
// and version. It knows every webhook the view applied, pruned or not.
func (v *Webhooks) Locate(ctx context.Context, id string) (stream string, version uint64, ok bool, err error) {
	var n int64
	err = v.v.read(func(db *sql.DB) error {
		return db.QueryRowContext(ctx, "SELECT stream, version FROM webhook_log WHERE id = ?", id).Scan(&stream, &n)
	})
	if errors.Is(err, sql.ErrNoRows) {
		return "", 0, false, nil
	}
	if err != nil {
		return "", 0, false, fmt.Errorf("locate webhook %s in the log: %w", id, err)
	}
	return stream, uint64(n), true, nil
}

// ReceiptFromLog folds the receipt of webhook id from the events of its
// stream, from its WebhookReceived (at version) on, as the view would have
// it: how GET /api/webhooks/{id} answers for a receipt past the retention.
// ok is false when the events hold no such webhook.
func ReceiptFromLog(id string, version uint64, recs []domain.RecordedEvent) (Webhook, bool, error) {
	var w *Webhook
	for _, rec := range recs {
		if rec.Version < version {
			continue
		}
		env, err := domain.Decode(rec)
		if err != nil {
			return Webhook{}, false, fmt.Errorf("read event %d of %s: %w", rec.Version, rec.Stream, err)
		}
		at := env.OccurredAt.UTC()
		set := func(status, message string) {
			if w == nil {
				w = &Webhook{ID: id, ReceivedAt: at}
			}
			w.Status, w.Message, w.UpdatedAt = status, message, at
		}
		switch e := env.Event.(type) {
		case domain.WebhookReceived:
			if e.WebhookID == id {
				contact, _ := domain.ParseContactID(e.ContactID)
				w = &Webhook{ID: id, Action: e.Action, ContactID: contact, Status: WebhookQueued, ReceivedAt: e.ReceivedAt.UTC(), UpdatedAt: at}
			}
		case domain.WebhookRetrying:
			if e.WebhookID == id {
				set(WebhookRetrying, e.Error)
				w.Attempts = e.Attempt
			}
		case domain.WebhookProcessed:
			if e.WebhookID == id {
				set(WebhookProcessed, e.Message)
			}
		case domain.WebhookIgnored:
			if e.WebhookID == id {
				set(WebhookIgnored, e.Reason)
			}
		case domain.WebhookFailed:
			if e.WebhookID == id {
				set(WebhookFailed, e.Reason)
			}
		}
	}
	if w == nil {
		return Webhook{}, false, nil
	}
	return *w, true, nil
}

// Open returns the webhooks not yet closed (queued or retrying), oldest
// first, through the index of open receipts.
func (v *Webhooks) Open(ctx context.Context) ([]Webhook, error) {
	return v.list(ctx, "SELECT "+webhookColumns+" FROM webhooks INDEXED BY webhooks_open WHERE status IN ('queued', 'retrying') ORDER BY received_at, id")
}

// All returns every receipt the view keeps, oldest first.
func (v *Webhooks) All(ctx context.Context) ([]Webhook, error) {
	return v.list(ctx, "SELECT "+webhookColumns+" FROM webhooks ORDER BY received_at, id")
}

// ByContact returns up to limit receipts of a contact, newest first.
func (v *Webhooks) ByContact(ctx context.Context, contact domain.ContactID, limit int) ([]Webhook, error) {
	return v.list(ctx, "SELECT "+webhookColumns+" FROM webhooks WHERE contact_id = ? ORDER BY received_at DESC, id DESC LIMIT ?", int64(contact), limit)
}

func (v *Webhooks) list(ctx context.Context, q string, args ...any) ([]Webhook, error) {
	out, err := queryRows(ctx, v.v, nil, scanWebhook, q, args...)
	if err != nil {
		return nil, fmt.Errorf("list receipts: %w", err)
	}
	return out, nil
}
