package command

import (
	"context"
	"sync"
	"testing"

	"github.com/usersync/usersync/domain"
)

// gatedCRM holds each read until released and counts the reads in flight.
type gatedCRM struct {
	mu       sync.Mutex
	inflight int
	most     int
	release  chan struct{}
}

func (g *gatedCRM) Contact(ctx context.Context, id domain.ContactID) (domain.CRMContact, error) {
	g.mu.Lock()
	g.inflight++
	g.most = max(g.most, g.inflight)
	g.mu.Unlock()
	<-g.release
	g.mu.Lock()
	g.inflight--
	g.mu.Unlock()
	return domain.CRMContact{ID: id}, nil
}

func (g *gatedCRM) Tags(context.Context) ([]domain.Tag, error) { return nil, nil }

func (g *gatedCRM) inFlight() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.inflight
}

func TestLimitCRM_NeverMoreReadsInFlightThanItsSlots(t *testing.T) {
	// Given two slots and six readers
	g := &gatedCRM{release: make(chan struct{})}
	crm := limitCRM(g, 2)
	var wg sync.WaitGroup
	for i := range 6 {
		wg.Go(func() {
			if _, err := crm.Contact(context.Background(), domain.ContactID(i+1)); err != nil {
				t.Error(err)
			}
		})
	}
	// When the reads are let through one at a time
	for left := 6; left > 0; left-- {
		eventually(t, "the slots to fill", func() bool { return g.inFlight() == min(2, left) })
		g.release <- struct{}{}
	}
	wg.Wait()
	// Then never more than two were in flight
	if g.most != 2 {
		t.Errorf("%d reads were in flight at once, want 2", g.most)
	}
}

func TestLimitCRM_WaitingReadEndsWithItsContext(t *testing.T) {
	g := &gatedCRM{release: make(chan struct{})}
	crm := limitCRM(g, 1)
	go func() { _, _ = crm.Contact(context.Background(), 1) }()
	eventually(t, "the slot to fill", func() bool { return g.inFlight() == 1 })
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := crm.Contact(ctx, 2); err == nil {
		t.Error("a read waiting for a slot outlived its context")
	}
	g.release <- struct{}{}
}
