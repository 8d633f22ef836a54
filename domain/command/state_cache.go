package command

import (
	"container/list"
	"context"
	"fmt"
	"maps"
	"slices"
	"sync"

	"github.com/usersync/usersync/domain"
)

// stateCache keeps the states of the contacts used last, each folded up
// to a stream version, evicting the least recently used beyond size.
// A load folds onto the cached state only events read from the store
// (ReadStreamFrom after its version): durable facts, so a decision that
// is never appended leaves nothing behind. Callers get a copy.
//
// A cached state keeps in Webhooks only the webhooks still open: closed
// ones are dropped, so a state's size is its user and open webhooks, not
// its history. (Open answers the same for a dropped id, closed; webhook
// ids are unique, so none is received twice.)
type stateCache struct {
	size int

	mu  sync.Mutex
	m   map[domain.ContactID]*list.Element // of *cachedState
	lru *list.List                         // front: used last
}

type cachedState struct {
	id domain.ContactID
	// mu serializes the folds onto state: the same contact may be loaded
	// by its own webhook and by another contact's reservation check.
	mu    sync.Mutex
	state *domain.ContactState // nil until first loaded
	// settled names the user whose reservations were found to be this
	// contact's (settledOnce) in the state at version settledAt; it holds
	// while no user event (created, linked, unlinked) came after it:
	// userAt is the version of the last one folded.
	settled   string
	settledAt uint64
	userAt    uint64
}

func newStateCache(size int) *stateCache {
	return &stateCache{size: size, m: map[domain.ContactID]*list.Element{}, lru: list.New()}
}

// entry is id's cache entry, made and marked used last.
func (c *stateCache) entry(id domain.ContactID) *cachedState {
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.m[id]; ok {
		c.lru.MoveToFront(el)
		return el.Value.(*cachedState)
	}
	e := &cachedState{id: id}
	c.m[id] = c.lru.PushFront(e)
	for c.lru.Len() > c.size {
		old := c.lru.Back()
		c.lru.Remove(old)
		delete(c.m, old.Value.(*cachedState).id)
	}
	return e
}

// drop forgets e (a fold failed: what it holds is not to be trusted).
func (c *stateCache) drop(e *cachedState) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.m[e.id]; ok && el.Value == e {
		c.lru.Remove(el)
		delete(c.m, e.id)
	}
}

// lookup is id's entry, nil when it is not cached.
func (c *stateCache) lookup(id domain.ContactID) *cachedState {
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.m[id]; ok {
		return el.Value.(*cachedState)
	}
	return nil
}

// settled reports whether key is remembered for id and no user event was
// folded after it.
func (c *stateCache) settled(id domain.ContactID, key string) bool {
	e := c.lookup(id)
	if e == nil {
		return false
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.settled != "" && e.settled == key && e.settledAt >= e.userAt
}

// markSettled remembers key for id as found in its state at version, if
// id is cached.
func (c *stateCache) markSettled(id domain.ContactID, key string, version uint64) {
	if e := c.lookup(id); e != nil {
		e.mu.Lock()
		e.settled, e.settledAt = key, version
		e.mu.Unlock()
	}
}

// len is how many contacts are cached.
func (c *stateCache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lru.Len()
}

// load is id's current state: the cached one topped up with the events
// after its version, or the whole stream folded.
func (c *stateCache) load(ctx context.Context, store domain.EventStore, id domain.ContactID) (*domain.ContactState, error) {
	e := c.entry(id)
	e.mu.Lock()
	defer e.mu.Unlock()
	stream := id.Stream()
	if e.state != nil {
		recs, err := store.ReadStreamFrom(ctx, stream, e.state.Version)
		if err != nil {
			return nil, fmt.Errorf("read %s after version %d: %w", stream, e.state.Version, err)
		}
		if len(recs) == 0 || recs[0].Version == e.state.Version+1 {
			if err := e.fold(e.state, recs); err != nil {
				e.state = nil
				c.drop(e)
				return nil, err
			}
			return cloneState(e.state), nil
		}
		// Not the next version: the store does not continue the state
		// (it cannot happen with a conforming store); read it all.
		e.state = nil
	}
	recs, err := store.ReadStream(ctx, stream)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", stream, err)
	}
	s := domain.NewContactState(id)
	e.userAt = 0
	if err := e.fold(s, recs); err != nil {
		c.drop(e)
		return nil, err
	}
	e.state = s
	return cloneState(s), nil
}

// fold applies recs to s, drops the webhooks they closed from s.Webhooks
// and notes the version of the last user event.
func (e *cachedState) fold(s *domain.ContactState, recs []domain.RecordedEvent) error {
	closed := false
	for _, r := range recs {
		env, err := domain.Decode(r)
		if err != nil {
			return fmt.Errorf("load %s: %w", s.ContactID.Stream(), err)
		}
		s.Apply(env)
		s.Version = r.Version
		switch env.Event.(type) {
		case domain.WebhookProcessed, domain.WebhookIgnored, domain.WebhookFailed:
			closed = true
		case domain.UserCreated, domain.UserLinked, domain.UserUnlinked:
			e.userAt = r.Version
		}
	}
	if closed {
		maps.DeleteFunc(s.Webhooks, func(_ string, done bool) bool { return done })
	}
	return nil
}

// cloneState is a copy of s that its holder may change (Apply, Record)
// without changing s.
func cloneState(s *domain.ContactState) *domain.ContactState {
	c := *s
	c.Webhooks = maps.Clone(s.Webhooks)
	if c.Webhooks == nil {
		c.Webhooks = map[string]bool{}
	}
	c.Pending = slices.Clone(s.Pending)
	if s.User != nil {
		// Tags are replaced, never changed in place: sharing them is safe.
		c.User = cloneUser(s.User)
	}
	if s.Password != nil {
		p := *s.Password
		c.Password = &p
	}
	return &c
}
