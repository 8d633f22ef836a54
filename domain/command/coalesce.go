package command

import (
	"context"
	"errors"

	"github.com/usersync/usersync/domain"
)

// Coalescing: when a contact has several webhooks queued, the oldest is
// decided as always, and each one after it joins the same append if it
// decides to the same result alone and together. That holds for a webhook
// that touches nothing but the contact's own stream, decided on the state
// its predecessors leave and on the same FunnelKit answer: FunnelKit is
// read when a webhook is processed, not when it was received, so one read
// after the latest webhook is what processing them one right after the
// other would have seen. So a webhook joins when
//
//   - the contact has a user (add is then update; no create, no link),
//   - it reads no other contact: no email lookup, no email change (an
//     address to reserve), and
//   - its reads of FunnelKit succeed or fail for good (a webhook that must
//     be retried ends the batch: it is decided alone next, as today, and
//     holds the later ones back).
//
// The batch ends before the first webhook that does not qualify; that one
// is the oldest of the next batch.

// decideBatch decides the oldest open webhook (decide) and then the ones
// after it that qualify, up to limit in all: the events to append at s's
// version and one outcome per webhook.
func (w *work) decideBatch(ctx context.Context, s *domain.ContactState, limit int) ([]domain.Envelope, []Outcome, error) {
	version := s.Version
	envs, first, err := w.decide(ctx, s)
	if err != nil || first.WebhookID == "" {
		return envs, nil, err
	}
	outs := []Outcome{first}
	if limit <= 1 || first.Status == StatusRetrying || s.Version != version || w.owner != nil || w.releaseEmail != "" {
		// Retrying, recorded in parts, linked or giving an address up:
		// these end with the webhook itself.
		return envs, outs, nil
	}
	cur := cloneState(s)
	for _, e := range envs {
		cur.Apply(e)
	}
	for len(outs) < limit {
		more, out, ok := w.decideJoined(ctx, cur)
		if !ok {
			break
		}
		for _, e := range more {
			cur.Apply(e)
		}
		envs = append(envs, more...)
		outs = append(outs, out)
	}
	return envs, outs, nil
}

// decideJoined decides the oldest open webhook of cur if it may join the
// batch (see above): its events, outcome last, and its outcome. ok is
// false when it may not; nothing is then decided for it.
func (w *work) decideJoined(ctx context.Context, cur *domain.ContactState) ([]domain.Envelope, Outcome, bool) {
	if len(cur.Pending) == 0 || cur.User == nil {
		return nil, Outcome{}, false
	}
	pw := cur.Pending[0]
	if pw.NextAttemptAt.After(w.p.now()) || !w.covered(pw.WebhookID) {
		// Waiting for its retry, or recorded after the CRM read (a
		// decision made again after a lost race): decided next, alone.
		return nil, Outcome{}, false
	}
	req, err := domain.ParseRequest(pw.WebhookReceived)
	if err != nil {
		f := domain.Fail(domain.ErrInvalidRequest, err.Error())
		return w.joined(pw, nil, domain.WebhookFailed{WebhookID: pw.WebhookID, Action: pw.Action, Reason: f.Error(), Status: recordedStatus(f)}, f)
	}
	if req.Action != domain.ActionUpdateTags {
		// update (and add, the user existing): the address must stay
		// the user's, or the change is a reservation.
		c, err := w.contactFromCRM(ctx)
		if err != nil {
			return nil, Outcome{}, false
		}
		email := domain.NormalizeEmail(c.Email)
		if email != "" && domain.ValidEmail(email) && domain.EmailKey(email) != domain.EmailKey(cur.User.Email) {
			return nil, Outcome{}, false
		}
	}
	// The reads update makes, made first: a temporary failure ends the
	// batch before the webhook.
	if _, err := w.tagsFor(ctx, req); err != nil && domain.Temporary(err) {
		return nil, Outcome{}, false
	}
	wh := w.wh
	w.wh = pw.WebhookID
	defer func() { w.wh = wh }()
	events, outcome, err := w.update(ctx, cur, pw, req)
	var failure *domain.Failure
	switch {
	case err == nil:
		return w.joined(pw, events, outcome, nil)
	case errors.As(err, &failure) && !domain.Temporary(err):
		f := domain.WebhookFailed{WebhookID: pw.WebhookID, Action: req.Action, Reason: failure.Error(), Status: recordedStatus(failure)}
		return w.joined(pw, nil, f, failure)
	}
	return nil, Outcome{}, false
}

// joined is the envelopes and outcome of a webhook that joined a batch:
// its events, then its outcome event.
func (w *work) joined(pw domain.PendingWebhook, events []domain.Event, outcome domain.Event, cause error) ([]domain.Envelope, Outcome, bool) {
	envs := make([]domain.Envelope, 0, len(events)+1)
	for _, e := range events {
		envs = append(envs, w.p.envelope(pw.WebhookID, e))
	}
	envs = append(envs, w.p.envelope(pw.WebhookID, outcome))
	return envs[:len(envs):len(envs)], outcomeOf(pw, w.id, outcome, cause), true
}

// outcomeOf is the Outcome a webhook's outcome event reports.
func outcomeOf(pw domain.PendingWebhook, id domain.ContactID, outcome domain.Event, cause error) Outcome {
	out := Outcome{WebhookID: pw.WebhookID, ContactID: id, Err: cause}
	switch o := outcome.(type) {
	case domain.WebhookProcessed:
		out.Status, out.Message, out.UserID = StatusProcessed, o.Message, o.UserID
	case domain.WebhookIgnored:
		out.Status, out.Message = StatusIgnored, o.Reason
	case domain.WebhookFailed:
		out.Status, out.Message = StatusFailed, o.Reason
	}
	return out
}
