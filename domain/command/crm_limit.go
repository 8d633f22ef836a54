package command

import (
	"context"
	"fmt"

	"github.com/usersync/usersync/domain"
)

// DefaultCRMConcurrency is how many FunnelKit reads webhook processing
// makes at once when not told.
const DefaultCRMConcurrency = 16

// limitedCRM lets at most cap(slots) reads through to crm at once; the
// others wait (until their context ends) for a slot.
type limitedCRM struct {
	crm   domain.CRM
	slots chan struct{}
}

func limitCRM(crm domain.CRM, n int) domain.CRM {
	return limitedCRM{crm: crm, slots: make(chan struct{}, n)}
}

func (l limitedCRM) acquire(ctx context.Context) error {
	select {
	case l.slots <- struct{}{}:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("wait for a FunnelKit slot: %w", ctx.Err())
	}
}

func (l limitedCRM) Contact(ctx context.Context, id domain.ContactID) (domain.CRMContact, error) {
	if err := l.acquire(ctx); err != nil {
		return domain.CRMContact{}, err
	}
	defer func() { <-l.slots }()
	return l.crm.Contact(ctx, id)
}

func (l limitedCRM) Tags(ctx context.Context) ([]domain.Tag, error) {
	if err := l.acquire(ctx); err != nil {
		return nil, err
	}
	defer func() { <-l.slots }()
	return l.crm.Tags(ctx)
}
