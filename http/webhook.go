package http

import (
	"context"
	"errors"
	"fmt"
	"net"
	nethttp "net/http"
	"strconv"
	"time"

	"github.com/usersync/usersync/domain"
	"github.com/usersync/usersync/domain/command"
	"github.com/usersync/usersync/projections"
)

// webhookAnswer is the JSON body of every webhook answer.
type webhookAnswer struct {
	Success   bool              `json:"success"`
	Message   string            `json:"message"`
	WebhookID string            `json:"webhook_id"`
	Status    string            `json:"status,omitempty"`
	User      *projections.User `json:"user,omitempty"`
}

// webhook handles a FunnelKit webhook on any path. The order of checks and
// the status codes follow docs/api.md (the protocol reference's usersync
// column). Once the webhook is recorded, nothing loses it: the answer only
// says how far processing got within the wait. What it found out goes to
// the request's WebhookReport, which the decorators log and count.
func (s *Server) webhook(w nethttp.ResponseWriter, r *nethttp.Request) {
	start := time.Now()
	r, rep := Report(r)
	reply := func(status int, a webhookAnswer) {
		rep.Status = status
		writeAnswer(w, status, a)
	}
	// Refused before it is recorded, and before it has an id.
	refuse := func(status int, why, msg string) {
		rep.Outcome, rep.Reason, rep.Refused = outcomeRejected, msg, why
		reply(status, webhookAnswer{Message: msg})
	}
	params, err := readParams(r)
	if err != nil {
		refuse(nethttp.StatusBadRequest, RefusedUnreadable, "Could not read the webhook: "+err.Error())
		return
	}
	rawAction := params["wpf_action"]
	if rawAction == "" {
		refuse(nethttp.StatusInternalServerError, RefusedNoAction, "No Action Specified: add wpf_action=add, update or update_tags")
		return
	}
	// The key is checked first, in constant time, so that the right key
	// is never throttled; only a wrong one counts against its source.
	if !s.cfg.AccessKey.Matches(params["access_key"]) {
		if wait, throttled := s.throttled(remoteHost(r)); throttled {
			secs := retryAfterSeconds(wait)
			w.Header().Set("Retry-After", strconv.Itoa(secs))
			refuse(nethttp.StatusTooManyRequests, RefusedThrottled,
				fmt.Sprintf("Too many wrong access keys from this address: try again in %d s (the right key is always accepted)", secs))
			return
		}
		refuse(nethttp.StatusForbidden, RefusedWrongSecret, "Invalid Access Key")
		return
	}
	act, known := domain.NormalizeAction(rawAction)
	rep.Action = "unknown"
	if known {
		rep.Action = act
	}
	id := s.cfg.NewID()
	rep.WebhookID = id
	if act == domain.ActionTest {
		rep.Outcome = outcomeTest
		reply(nethttp.StatusOK, webhookAnswer{Success: true, Message: "usersync is reachable; the access key is right", WebhookID: id, Status: command.StatusProcessed})
		return
	}
	if s.cfg.Admit != nil {
		if err := s.cfg.Admit(r.Context()); err != nil {
			w.Header().Set("Retry-After", "60")
			// Authenticated, so not counted as a refused request: its
			// outcome (rejected, 503) is logged and counted as a webhook.
			msg := "usersync cannot take new webhooks right now, none was recorded; FunnelKit should send it again: " + err.Error()
			rep.Outcome, rep.Reason = outcomeRejected, msg
			reply(nethttp.StatusServiceUnavailable, webhookAnswer{Message: msg})
			return
		}
	}
	received := domain.WebhookReceived{
		WebhookID: id, Action: act, ContactID: params["contact_id"], Params: recordable(params),
		Method: r.Method, Source: remoteHost(r), ReceivedAt: s.cfg.Now().UTC(),
	}
	notRecorded := func(err error) {
		rep.Outcome, rep.Err = outcomeFailed, err
		if errors.Is(err, domain.ErrStorageUnavailable) {
			// The event store is unreachable or its disk is full: it
			// passes, so the sender is told to come back.
			w.Header().Set("Retry-After", "30")
			reply(nethttp.StatusServiceUnavailable, webhookAnswer{Message: "the event store cannot record webhooks right now, this one was not recorded; FunnelKit should send it again", WebhookID: id})
			return
		}
		reply(nethttp.StatusInternalServerError, webhookAnswer{Message: "could not record the webhook; FunnelKit should send it again", WebhookID: id})
	}
	// Answers decided here, before processing, are recorded with the webhook.
	reject := func(stream string, status int, final domain.Event, msg string) {
		if err := s.record(r.Context(), stream, received, final); err != nil {
			notRecorded(err)
			return
		}
		rep.Outcome, rep.Reason = outcomeRejected, msg
		if status == nethttp.StatusOK {
			rep.Outcome = outcomeIgnored
		}
		reply(status, webhookAnswer{Message: msg, WebhookID: id, Status: statusOf(final)})
	}
	if !known {
		msg := fmt.Sprintf("unknown wpf_action %q: use add, update or update_tags", domain.Truncate(rawAction, 40))
		reject(domain.WebhookStream(id), nethttp.StatusBadRequest, domain.WebhookFailed{WebhookID: id, Action: act, Reason: msg, Status: 400}, msg)
		return
	}
	if params["contact_id"] == "" {
		msg := "Abort: Contact data not found"
		reject(domain.WebhookStream(id), nethttp.StatusOK, domain.WebhookIgnored{WebhookID: id, Action: act, Reason: msg}, msg)
		return
	}
	contact, err := domain.ParseContactID(params["contact_id"])
	if err != nil {
		reject(domain.WebhookStream(id), nethttp.StatusBadRequest, domain.WebhookFailed{WebhookID: id, Action: act, Reason: err.Error(), Status: 400}, err.Error())
		return
	}
	rep.ContactID = contact
	req, err := domain.ParseRequest(received)
	if err != nil {
		reject(contact.Stream(), nethttp.StatusBadRequest, domain.WebhookFailed{WebhookID: id, Action: act, Reason: err.Error(), Status: 400}, err.Error())
		return
	}
	var ch <-chan command.Outcome
	if !req.Async && s.cfg.Outcomes == nil {
		ch = s.cfg.Queue.Await(id)
	}
	if err := s.record(r.Context(), contact.Stream(), received, nil); err != nil {
		if ch != nil {
			s.cfg.Queue.Forget(id, ch)
		}
		notRecorded(err)
		return
	}
	// Recorded: from here on the webhook is processed whatever happens to
	// this request.
	queued := func(msg string) {
		rep.Outcome, rep.Reason = outcomeQueued, msg
		reply(nethttp.StatusAccepted, webhookAnswer{Success: true, Message: msg, WebhookID: id, Status: command.StatusQueued})
	}
	if err := s.cfg.Queue.Submit(contact); err != nil {
		if ch != nil {
			s.cfg.Queue.Forget(id, ch)
		}
		queued("Queued: usersync is restarting; processing continues at the next start")
		return
	}
	if req.Async {
		queued("Queued")
		return
	}
	if s.cfg.Outcomes != nil {
		wctx, cancel := context.WithTimeout(r.Context(), s.cfg.Wait)
		out, err := s.cfg.Outcomes.WaitOutcome(wctx, id)
		cancel()
		switch {
		case err == nil:
			s.answer(r.Context(), w, rep, out, start)
		case r.Context().Err() != nil:
			rep.Outcome, rep.Reason = outcomeQueued, "the sender went away; processing continues"
		default:
			if !errors.Is(err, context.DeadlineExceeded) {
				s.cfg.Log.Warn("waiting for a webhook's outcome in the views failed; answered queued", "webhook_id", id, "err", err)
			}
			queued("Queued: processing continues")
		}
		return
	}
	wait := time.NewTimer(s.cfg.Wait)
	defer wait.Stop()
	select {
	case out := <-ch:
		s.answer(r.Context(), w, rep, out, start)
	case <-wait.C:
		s.cfg.Queue.Forget(id, ch)
		queued("Queued: processing continues")
	case <-r.Context().Done():
		s.cfg.Queue.Forget(id, ch)
		rep.Outcome, rep.Reason = outcomeQueued, "the sender went away; processing continues"
	}
}

// writeAnswer writes a webhook answer as writeJSON would. An answer
// without a user whose texts need no escaping, as every 202 is, is put
// together by hand: it is the one answer of a burst of webhooks.
func writeAnswer(w nethttp.ResponseWriter, status int, a webhookAnswer) {
	if a.User != nil || !plainJSON(a.Message) || !plainJSON(a.WebhookID) || !plainJSON(a.Status) {
		writeJSON(w, status, a)
		return
	}
	buf := make([]byte, 0, 128+len(a.Message))
	buf = append(buf, `{"success":`...)
	buf = strconv.AppendBool(buf, a.Success)
	buf = append(append(append(buf, `,"message":"`...), a.Message...), `","webhook_id":"`...)
	buf = append(append(buf, a.WebhookID...), '"')
	if a.Status != "" {
		buf = append(append(append(buf, `,"status":"`...), a.Status...), '"')
	}
	buf = append(buf, "}\n"...)
	h := w.Header()
	h.Set("Content-Type", "application/json; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_, _ = w.Write(buf)
}

// plainJSON reports whether s is printable ASCII without '"' or '\\', so
// that it is its own JSON string body.
func plainJSON(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= 0x7f || c == '"' || c == '\\' {
			return false
		}
	}
	return true
}

// answer writes the answer for a processed webhook, with the user view
// once the views have applied the outcome, and reports it in rep.
func (s *Server) answer(ctx context.Context, w nethttp.ResponseWriter, rep *WebhookReport, out command.Outcome, start time.Time) {
	rep.Processed, rep.Outcome, rep.Message = true, out.Status, out.Message
	a := webhookAnswer{Success: out.Success(), Message: out.Message, WebhookID: out.WebhookID, Status: out.Status}
	status := statusFor(out)
	if out.Status == command.StatusRetrying {
		a.Success, a.Status, status = true, command.StatusQueued, nethttp.StatusAccepted
	}
	if out.Status == command.StatusProcessed {
		wctx, cancel := context.WithTimeout(ctx, max(s.cfg.Wait-time.Since(start), 100*time.Millisecond))
		defer cancel()
		if err := s.cfg.Views.WaitFor(wctx, "users", out.Position); err == nil {
			if u, ok, err := s.cfg.Views.Users.Get(wctx, out.ContactID); err == nil && ok {
				a.User = &u
			}
		}
	}
	rep.Status = status
	writeJSON(w, status, a)
}

// statusFor is the HTTP status of the answer for a webhook's outcome: 200
// when it was processed or ignored, 202 while it waits for a retry, and
// for a failure the status its kind calls for (the one its WebhookFailed
// event records). It is the one place that maps outcomes to statuses.
func statusFor(out command.Outcome) int {
	switch {
	case out.Status == command.StatusRetrying:
		return nethttp.StatusAccepted
	case out.Status != command.StatusFailed:
		return nethttp.StatusOK
	case errors.Is(out.Err, domain.ErrInvalidRequest):
		return nethttp.StatusBadRequest
	case errors.Is(out.Err, domain.ErrCRMRefused):
		return nethttp.StatusBadGateway
	default:
		return nethttp.StatusInternalServerError
	}
}

// record appends the webhook (and an outcome decided at once) durably.
func (s *Server) record(ctx context.Context, stream string, received domain.WebhookReceived, final domain.Event) error {
	now := s.cfg.Now().UTC()
	envs := []domain.Envelope{{Event: received, OccurredAt: now, WebhookID: received.WebhookID}}
	if final != nil {
		envs = append(envs, domain.Envelope{Event: final, OccurredAt: now, WebhookID: received.WebhookID})
	}
	raw, err := domain.EncodeAll(envs)
	if err != nil {
		return err
	}
	// The request may be cancelled by the sender; the record must not be.
	if _, err := s.cfg.Store.Append(context.WithoutCancel(ctx), stream, domain.AnyVersion(), raw...); err != nil {
		return fmt.Errorf("append webhook %s to %s: %w", received.WebhookID, stream, err)
	}
	return nil
}

func statusOf(e domain.Event) string {
	switch e.(type) {
	case domain.WebhookIgnored:
		return command.StatusIgnored
	case domain.WebhookFailed:
		return command.StatusFailed
	}
	return ""
}

func remoteHost(r *nethttp.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}
