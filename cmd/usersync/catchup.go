package main

import (
	"context"
	"sync"

	"github.com/usersync/usersync/domain"
	"github.com/usersync/usersync/eventstore/pipeline"
)

// afterViews holds a process manager that is itself far behind the log
// (views.db lost: its checkpoint went with it) while the views are being
// built aside at the start (projections.CatchUp), so that the two
// catch-ups do not share the cores and usersync is ready at rebuild
// speed; it then catches up from its own checkpoint. One at or near the
// head goes on at once. It decides at its first event.
type afterViews struct {
	pipeline.Consumer
	views interface{ WaitAside(context.Context) error }
	head  func(context.Context) (uint64, error)
	// minBehind is how far behind the head the process manager must be
	// to wait (serve: projections.DefaultCatchUpMinBehind).
	minBehind uint64

	mu   sync.Mutex
	past bool
}

// Handle waits, the first time, while the views are built aside if the
// process manager is far behind, then handles rec.
func (a *afterViews) Handle(ctx context.Context, rec domain.RecordedEvent) error {
	if err := a.wait(ctx, rec.Position); err != nil {
		return err
	}
	return a.Consumer.Handle(ctx, rec)
}

// wait returns at once after its first return; an error only when ctx is
// done.
func (a *afterViews) wait(ctx context.Context, pos uint64) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.past {
		return nil
	}
	if head, err := a.head(ctx); err == nil && head >= pos && head-pos >= a.minBehind {
		if err := a.views.WaitAside(ctx); err != nil && ctx.Err() != nil {
			return err
		}
	}
	a.past = true
	return nil
}
