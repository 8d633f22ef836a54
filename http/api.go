package http

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	nethttp "net/http"
	"strconv"

	"github.com/gorilla/mux"

	"github.com/usersync/usersync/domain"
	"github.com/usersync/usersync/eventstore/pipeline"
	"github.com/usersync/usersync/projections"
)

const (
	defaultLimit = 100
	maxLimit     = 1000
)

// page reads limit and after; ok is false once an error was written.
func page(w nethttp.ResponseWriter, r *nethttp.Request) (limit int, after domain.ContactID, ok bool) {
	limit = defaultLimit
	if v := r.URL.Query().Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > maxLimit {
			writeError(w, nethttp.StatusBadRequest, "limit must be a whole number from 1 to 1000")
			return 0, 0, false
		}
		limit = n
	}
	if v := r.URL.Query().Get("after"); v != "" {
		id, err := domain.ParseContactID(v)
		if err != nil {
			writeError(w, nethttp.StatusBadRequest, "after must be the next cursor of a previous page")
			return 0, 0, false
		}
		after = id
	}
	return limit, after, true
}

type usersPage struct {
	Users []projections.User `json:"users"`
	Next  string             `json:"next"`
}

func (s *Server) writeUsers(w nethttp.ResponseWriter, r *nethttp.Request, tag uint64) {
	limit, after, ok := page(w, r)
	if !ok {
		return
	}
	users, more, err := s.cfg.Views.Users.List(r.Context(), after, limit, tag)
	if err != nil {
		s.viewError(w, "list users", err)
		return
	}
	p := usersPage{Users: users}
	if more && len(users) > 0 {
		p.Next = users[len(users)-1].ContactID.String()
	}
	writeJSON(w, nethttp.StatusOK, p)
}

func (s *Server) listUsers(w nethttp.ResponseWriter, r *nethttp.Request) {
	var tag uint64
	if v := r.URL.Query().Get("tag"); v != "" {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil || n == 0 {
			writeError(w, nethttp.StatusBadRequest, "tag must be a FunnelKit tag id (a positive integer)")
			return
		}
		tag = n
	}
	s.writeUsers(w, r, tag)
}

func (s *Server) tagUsers(w nethttp.ResponseWriter, r *nethttp.Request) {
	n, err := strconv.ParseUint(mux.Vars(r)["id"], 10, 64)
	if err != nil || n == 0 {
		writeError(w, nethttp.StatusBadRequest, "tag id must be a positive integer")
		return
	}
	_, ok, err := s.cfg.Views.Tags.Get(r.Context(), n)
	if err != nil {
		s.viewError(w, "read tag", err)
		return
	}
	if !ok {
		writeError(w, nethttp.StatusNotFound, "no user has ever had tag "+strconv.FormatUint(n, 10))
		return
	}
	s.writeUsers(w, r, n)
}

func contactVar(w nethttp.ResponseWriter, r *nethttp.Request) (domain.ContactID, bool) {
	id, err := domain.ParseContactID(mux.Vars(r)["contact_id"])
	if err != nil {
		writeError(w, nethttp.StatusBadRequest, err.Error())
		return 0, false
	}
	return id, true
}

func (s *Server) getUser(w nethttp.ResponseWriter, r *nethttp.Request) {
	id, ok := contactVar(w, r)
	if !ok {
		return
	}
	u, ok, err := s.cfg.Views.Users.Get(r.Context(), id)
	if err != nil {
		s.viewError(w, "read user", err)
		return
	}
	if !ok {
		writeError(w, nethttp.StatusNotFound, "contact "+id.String()+" has no user")
		return
	}
	writeJSON(w, nethttp.StatusOK, u)
}

// historyEvent is one event of a contact's history.
type historyEvent struct {
	Position   uint64          `json:"position"`
	Version    uint64          `json:"version"`
	Type       string          `json:"type"`
	OccurredAt string          `json:"occurred_at"`
	WebhookID  string          `json:"webhook_id"`
	Data       json.RawMessage `json:"data"`
}

// redacted fields are replaced in history output: a password hash or a
// sealed password is of no use to a reader of the audit trail.
var redactedFields = []string{"password_hash", "sealed"}

func (s *Server) history(w nethttp.ResponseWriter, r *nethttp.Request) {
	id, ok := contactVar(w, r)
	if !ok {
		return
	}
	recs, err := s.cfg.Store.ReadStream(r.Context(), id.Stream())
	if err != nil {
		s.cfg.Log.Error("read history", "contact_id", id, "err", err)
		writeError(w, nethttp.StatusInternalServerError, "could not read the event store; see the server log")
		return
	}
	if len(recs) == 0 {
		writeError(w, nethttp.StatusNotFound, "contact "+id.String()+" has no history")
		return
	}
	out := make([]historyEvent, 0, len(recs))
	for _, rec := range recs {
		var meta domain.Metadata
		_ = json.Unmarshal(rec.Metadata, &meta)
		data := rec.Data
		var fields map[string]json.RawMessage
		if json.Unmarshal(rec.Data, &fields) == nil {
			changed := false
			for _, f := range redactedFields {
				if _, ok := fields[f]; ok {
					fields[f] = json.RawMessage(`"[redacted]"`)
					changed = true
				}
			}
			if changed {
				if b, err := json.Marshal(fields); err == nil {
					data = b
				}
			}
		}
		out = append(out, historyEvent{
			Position: rec.Position, Version: rec.Version, Type: rec.Type,
			OccurredAt: meta.OccurredAt.UTC().Format("2006-01-02T15:04:05.999999999Z07:00"), WebhookID: meta.WebhookID, Data: data,
		})
	}
	writeJSON(w, nethttp.StatusOK, map[string]any{"events": out})
}

func (s *Server) listTags(w nethttp.ResponseWriter, r *nethttp.Request) {
	tags, err := s.cfg.Views.Tags.List(r.Context())
	if err != nil {
		s.viewError(w, "list tags", err)
		return
	}
	writeJSON(w, nethttp.StatusOK, map[string]any{"tags": tags})
}

func (s *Server) passwordReturns(w nethttp.ResponseWriter, r *nethttp.Request) {
	status := r.URL.Query().Get("status")
	switch status {
	case "", projections.PasswordPending, projections.PasswordReturned, projections.PasswordFailed:
	default:
		writeError(w, nethttp.StatusBadRequest, "status must be pending, returned or failed")
		return
	}
	rows, err := s.cfg.Views.Passwords.List(r.Context(), status)
	if err != nil {
		s.viewError(w, "list password returns", err)
		return
	}
	if rows == nil {
		rows = []projections.PasswordReturn{}
	}
	writeJSON(w, nethttp.StatusOK, map[string]any{"password_returns": rows})
}

func (s *Server) getWebhook(w nethttp.ResponseWriter, r *nethttp.Request) {
	id := mux.Vars(r)["id"]
	wh, ok, err := s.cfg.Views.Webhooks.Get(r.Context(), id)
	if err != nil {
		s.viewError(w, "read receipt", err)
		return
	}
	if !ok {
		// Past the retention the receipt is folded from the log.
		if wh, ok, err = s.receiptFromLog(r.Context(), id); err != nil {
			s.cfg.Log.Error("read receipt from the log", "webhook_id", domain.Truncate(id, 60), "err", err)
			writeError(w, nethttp.StatusInternalServerError, "could not read the event store; see the server log")
			return
		}
	}
	if !ok {
		writeError(w, nethttp.StatusNotFound, "no webhook "+domain.Truncate(id, 60)+" (the receipt may take a moment to appear)")
		return
	}
	writeJSON(w, nethttp.StatusOK, wh)
}

// receiptFromLog is the receipt of a webhook the view no longer keeps,
// folded from the events of its stream from its WebhookReceived on.
func (s *Server) receiptFromLog(ctx context.Context, id string) (projections.Webhook, bool, error) {
	stream, version, ok, err := s.cfg.Views.Webhooks.Locate(ctx, id)
	if err != nil || !ok {
		return projections.Webhook{}, false, err
	}
	recs, err := s.cfg.Store.ReadStream(ctx, stream)
	if err != nil {
		return projections.Webhook{}, false, fmt.Errorf("read stream %s: %w", stream, err)
	}
	return projections.ReceiptFromLog(id, version, recs)
}

// viewError answers 500 for a view that could not be read, and logs why.
func (s *Server) viewError(w nethttp.ResponseWriter, what string, err error) {
	s.cfg.Log.Error(what, "err", err)
	writeError(w, nethttp.StatusInternalServerError, "could not read the views; see the server log")
}

func (s *Server) parked(w nethttp.ResponseWriter, r *nethttp.Request) {
	parked, err := s.cfg.Views.Parked(r.Context(), r.URL.Query().Get("handler"))
	if err != nil {
		s.cfg.Log.Error("list parked events", "err", err)
		writeError(w, nethttp.StatusInternalServerError, "could not read the parked events; see the server log")
		return
	}
	if parked == nil {
		parked = []domain.ParkedEvent{}
	}
	writeJSON(w, nethttp.StatusOK, map[string]any{"parked": parked})
}

// replayParked hands the parked events of a process manager (all of them,
// or the one at position) to it again.
func (s *Server) replayParked(w nethttp.ResponseWriter, r *nethttp.Request) {
	handler := r.URL.Query().Get("handler")
	if handler == "" {
		writeError(w, nethttp.StatusBadRequest, "handler is required: the handler column of GET /api/parked")
		return
	}
	var position uint64
	if v := r.URL.Query().Get("position"); v != "" {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil || n == 0 {
			writeError(w, nethttp.StatusBadRequest, "position must be the position of a parked event")
			return
		}
		position = n
	}
	if s.cfg.Replay == nil {
		writeError(w, nethttp.StatusNotImplemented, "replay is not available")
		return
	}
	parked, err := s.cfg.Views.Parked(r.Context(), handler)
	if err != nil {
		writeError(w, nethttp.StatusInternalServerError, "could not read the parked events; see the server log")
		return
	}
	type result struct {
		Position uint64 `json:"position"`
		Replayed bool   `json:"replayed"`
		Error    string `json:"error,omitempty"`
	}
	results := []result{}
	for _, pe := range parked {
		if position != 0 && pe.Position != position {
			continue
		}
		res := result{Position: pe.Position, Replayed: true}
		if err := s.cfg.Replay(r.Context(), pe); err != nil {
			if errors.Is(err, pipeline.ErrRebuildToReplay) {
				writeError(w, nethttp.StatusConflict, err.Error()+" (or POST /api/rebuild)")
				return
			}
			res.Replayed, res.Error = false, err.Error()
		}
		results = append(results, res)
	}
	if len(results) == 0 {
		writeError(w, nethttp.StatusNotFound, "no parked event matches")
		return
	}
	writeJSON(w, nethttp.StatusOK, map[string]any{"replayed": results})
}
