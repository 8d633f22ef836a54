package http

import (
	"log/slog"
	"sync"
	"time"
)

// DefaultRefusedLogsPerSecond is how many log lines of refused requests
// are written a second when the config leaves RefusedLogsPerSecond at 0.
const DefaultRefusedLogsPerSecond = 10

// Reasons a request is refused before it is authenticated, as counted in
// usersync_requests_refused_total{endpoint,reason}.
const (
	RefusedUnreadable  = "unreadable"   // webhook: body or parameters unreadable
	RefusedNoAction    = "no_action"    // webhook: no wpf_action
	RefusedWrongSecret = "wrong_secret" // wrong or missing access key or admin token
	RefusedThrottled   = "throttled"    // too many wrong secrets from the source: 429
)

// Endpoints of refused requests.
const (
	EndpointWebhook = "webhook"
	EndpointAPI     = "api"
)

// refusedLog writes the log lines of refused requests, at most perWindow
// in each window: a flood of wrong keys cannot fill the disk. The lines
// it holds back are counted and reported in one "refused requests not
// logged" line at the end of the window they were held back in (one timer,
// not a goroutine per request).
type refusedLog struct {
	log       *slog.Logger
	perWindow int
	window    time.Duration
	now       func() time.Time

	mu         sync.Mutex
	start      time.Time
	written    int
	suppressed int
	timer      *time.Timer
}

func newRefusedLog(log *slog.Logger, perSecond int, now func() time.Time) *refusedLog {
	return &refusedLog{log: log, perWindow: perSecond, window: time.Second, now: now}
}

// Info writes the line unless the window's lines are spent; then it only
// counts it.
func (l *refusedLog) Info(msg string, args ...any) {
	if l == nil {
		return
	}
	now := l.now()
	l.mu.Lock()
	if now.Sub(l.start) >= l.window || now.Before(l.start) {
		l.start, l.written = now, 0
	}
	if l.written < l.perWindow {
		l.written++
		l.mu.Unlock()
		l.log.Info(msg, args...)
		return
	}
	l.suppressed++
	if l.timer == nil {
		l.timer = time.AfterFunc(l.start.Add(l.window).Sub(now), l.flush)
	}
	l.mu.Unlock()
}

// flush reports the lines held back.
func (l *refusedLog) flush() {
	l.mu.Lock()
	n := l.suppressed
	l.suppressed, l.timer = 0, nil
	l.mu.Unlock()
	if n > 0 {
		l.log.Warn("refused requests not logged", "suppressed", n, "limit_per_second", l.perWindow,
			"hint", "counted in usersync_requests_refused_total; many wrong access keys or admin tokens from one source are throttled")
	}
}
