package projections

import (
	"context"
	"fmt"
	"slices"

	"github.com/usersync/usersync/domain"
)

// HandleOnly applies recs to the named view alone, as HandleBatch does for
// all four: tests use it to put one view ahead of the others.
func (v *Views) HandleOnly(ctx context.Context, name string, recs ...domain.RecordedEvent) ([]domain.ParkedEvent, error) {
	i := slices.Index(viewNames, name)
	if i < 0 {
		return nil, fmt.Errorf("no projection named %q", name)
	}
	var m mask
	m[i] = true
	return v.handle(ctx, m, recs)
}
