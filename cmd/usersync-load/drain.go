package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	nethttp "net/http"
	"net/url"
	"sync"
	"sync/atomic"
	"time"
)

// drainWorkers is how many receipts are looked up at once while draining.
const drainWorkers = 4

// drainStopAfter ends a round of look-ups once this many webhooks were
// found still in progress: the rest are most likely too.
const drainStopAfter = drainWorkers

// errAdminToken is a drain refused by usersync's API.
var errAdminToken = errors.New("usersync refused the admin token (401): give the right --admin-token to follow processing")

// drainResult is what following the queued webhooks found.
type drainResult struct {
	// Final counts the webhooks that reached a final status, by status.
	Final map[string]uint64
	// Unfinished is how many were still queued or retrying at the end.
	Unfinished int
	// LastFinal is when the last one was seen final; LastUpdated the
	// latest updated_at of their receipts: when usersync finished the
	// last one, whatever the polling's lag (zero if no receipt had one).
	LastFinal, LastUpdated time.Time
	// Lookups counts the receipts read; LookupErrors those that failed.
	Lookups, LookupErrors uint64
	TimedOut              bool
	Err                   error
}

// finalStatus tells whether a receipt's status is one processing ends in.
func finalStatus(s string) bool { return s == "processed" || s == "ignored" || s == "failed" }

// drainer follows webhooks through GET /api/webhooks/{id} until each has
// a final status.
type drainer struct {
	client   *nethttp.Client
	base     *url.URL
	token    string
	interval time.Duration
	// progress, when set, is told how many of the total are final.
	progress func(final, total int)
}

// drain looks the ids up in the order they were sent, in rounds: a round
// reads receipts from the oldest unfinished one on, drainWorkers at a
// time, and stops after drainStopAfter unfinished ones; between rounds it
// waits the poll interval (longer while nothing finishes). So the reads
// follow processing (about one per webhook, plus a few per interval)
// instead of sweeping every id again and again.
func (d *drainer) drain(ctx context.Context, ids []string, timeout time.Duration) drainResult {
	res := drainResult{Final: map[string]uint64{}, LastFinal: time.Now()}
	pending := append([]string(nil), ids...)
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var lookups, lookupErrors atomic.Uint64
	total := len(pending)
	wait := d.interval
	for len(pending) > 0 {
		statuses := make([]string, len(pending))
		updated := make([]time.Time, len(pending))
		var next, unfinished atomic.Int64
		var fatal atomic.Pointer[error]
		var wg sync.WaitGroup
		for range min(drainWorkers, len(pending)) {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for unfinished.Load() < drainStopAfter && ctx.Err() == nil && fatal.Load() == nil {
					i := int(next.Add(1) - 1)
					if i >= len(pending) {
						return
					}
					lookups.Add(1)
					st, at, err := d.status(ctx, pending[i])
					switch {
					case errors.Is(err, errAdminToken):
						fatal.Store(&err)
						return
					case err != nil:
						lookupErrors.Add(1)
						unfinished.Add(1)
					case finalStatus(st):
						statuses[i], updated[i] = st, at
					default:
						unfinished.Add(1)
					}
				}
			}()
		}
		wg.Wait()
		kept := pending[:0]
		done := 0
		for i, id := range pending {
			if statuses[i] != "" {
				res.Final[statuses[i]]++
				done++
				if updated[i].After(res.LastUpdated) {
					res.LastUpdated = updated[i]
				}
				continue
			}
			kept = append(kept, id)
		}
		pending = kept
		if done > 0 {
			res.LastFinal = time.Now()
		}
		if d.progress != nil {
			d.progress(total-len(pending), total)
		}
		if p := fatal.Load(); p != nil {
			res.Err = *p
			break
		}
		if len(pending) == 0 || ctx.Err() != nil {
			break
		}
		// A round that found nothing new final waits longer, up to ten
		// poll intervals: the figure comes from the receipts' updated_at,
		// so waiting longer only costs the tool's exit, not precision.
		wait = min(2*wait, 10*d.interval)
		if done > 0 {
			wait = d.interval
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
		case <-t.C:
		}
		t.Stop()
	}
	res.Unfinished = len(pending)
	res.TimedOut = len(pending) > 0 && res.Err == nil && errors.Is(ctx.Err(), context.DeadlineExceeded)
	res.Lookups, res.LookupErrors = lookups.Load(), lookupErrors.Load()
	return res
}

// status is the status of webhook id's receipt and when it last changed;
// "" while usersync has none yet (404: its views are behind).
func (d *drainer) status(ctx context.Context, id string) (string, time.Time, error) {
	u := *d.base
	u.Path = "/api/webhooks/" + url.PathEscape(id)
	u.RawQuery = ""
	req, err := nethttp.NewRequestWithContext(ctx, nethttp.MethodGet, u.String(), nil)
	if err != nil {
		return "", time.Time{}, err
	}
	req.Header.Set("Authorization", "Bearer "+d.token)
	resp, err := d.client.Do(req)
	if err != nil {
		return "", time.Time{}, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return "", time.Time{}, err
	}
	switch resp.StatusCode {
	case nethttp.StatusOK:
	case nethttp.StatusNotFound:
		return "", time.Time{}, nil
	case nethttp.StatusUnauthorized:
		return "", time.Time{}, errAdminToken
	default:
		return "", time.Time{}, fmt.Errorf("GET /api/webhooks/{id}: %s", resp.Status)
	}
	var receipt struct {
		Status    string    `json:"status"`
		UpdatedAt time.Time `json:"updated_at"`
	}
	if err := json.Unmarshal(body, &receipt); err != nil {
		return "", time.Time{}, fmt.Errorf("GET /api/webhooks/{id}: not a receipt: %w", err)
	}
	return receipt.Status, receipt.UpdatedAt, nil
}
