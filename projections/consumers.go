package projections

import (
	"context"

	"github.com/usersync/usersync/domain"
)

// ViewConsumer feeds one projection of Views from the event log: it has the
// methods of a pipeline consumer (Name, Position, Handle, Skip) and says
// with InOrderOnly that a view applies events in position order only, so
// its parked events are replayed by a rebuild.
type ViewConsumer struct {
	v    *Views
	name string
}

// Name is the projection's name.
func (c ViewConsumer) Name() string { return c.name }

// Position is the projection's checkpoint.
func (c ViewConsumer) Position(context.Context) (uint64, error) {
	return c.v.Position(c.name)
}

// Handle applies rec to the projection.
func (c ViewConsumer) Handle(ctx context.Context, rec domain.RecordedEvent) error {
	return c.v.Handle(ctx, c.name, rec)
}

// Skip moves the projection's checkpoint past a parked event.
func (c ViewConsumer) Skip(ctx context.Context, position uint64) error {
	return c.v.Skip(ctx, c.name, position)
}

// InOrderOnly reports true: a view cannot apply a parked event out of order.
func (c ViewConsumer) InOrderOnly() bool { return true }

// Consumers returns one consumer per projection, in the views' order.
func (v *Views) Consumers() []ViewConsumer {
	out := make([]ViewConsumer, len(v.all))
	for i, p := range v.all {
		out[i] = ViewConsumer{v: v, name: p.name}
	}
	return out
}
