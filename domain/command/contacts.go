package command

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/usersync/usersync/domain"
)

// errStale asks an update to load again and decide again: something the
// decision depended on (another stream, a claim) changed while deciding.
var errStale = errors.New("stream changed while deciding")

// conflict reports whether err asks for a new load and decision.
func conflict(err error) bool {
	return errors.Is(err, errStale) || errors.Is(err, domain.ErrConcurrency)
}

// conflicts is how updates wait and give up when other writers keep
// winning: Backoff between attempts, at most Max attempts.
type conflicts struct {
	backoff domain.Backoff
	max     int
	// lost, if set, is told of each race lost (the conflict's error)
	// before the next attempt: a metrics hook.
	lost func(err error)
}

// ErrRacesLost is the error of an update that gave up because other
// writers kept changing what it decided on. Nothing was appended; the
// work is still open and is tried again later.
var ErrRacesLost = errors.New("other writers kept winning; left for a later attempt")

// defaultConflicts waits 1 ms, 2 ms, 4 ms … up to 20 ms between attempts,
// 20 attempts in all.
func defaultConflicts() conflicts {
	return conflicts{backoff: domain.Backoff{Initial: time.Millisecond, Max: 20 * time.Millisecond}, max: 20}
}

// update is the one load → decide → append loop: it reads the stream's
// state with load, asks decide what to append, and appends that at the
// state's version (versionOf, read after decide). A conflict (the stream
// moved on, or decide returned errStale) starts again after a pause;
// decide is called again with the new state. Nothing decided means
// nothing appended.
func update[S any](ctx context.Context, store domain.EventStore, c conflicts, stream string,
	load func(context.Context) (S, error), versionOf func(S) uint64,
	decide func(S) ([]domain.Envelope, error)) (domain.AppendResult, error) {
	for n := 1; ; n++ {
		res, err := updateOnce(ctx, store, stream, load, versionOf, decide)
		if !conflict(err) {
			return res, err
		}
		if c.lost != nil {
			c.lost(err)
		}
		if n >= c.max {
			return domain.AppendResult{}, fmt.Errorf("update %s: gave up after %d concurrent changes: %w", stream, c.max, ErrRacesLost)
		}
		if !pause(ctx, time.Now().Add(c.backoff.Delay(n))) {
			return domain.AppendResult{}, ctx.Err()
		}
	}
}

func updateOnce[S any](ctx context.Context, store domain.EventStore, stream string,
	load func(context.Context) (S, error), versionOf func(S) uint64,
	decide func(S) ([]domain.Envelope, error)) (domain.AppendResult, error) {
	state, err := load(ctx)
	if err != nil {
		return domain.AppendResult{}, err
	}
	envs, err := decide(state)
	if err != nil || len(envs) == 0 {
		return domain.AppendResult{}, err
	}
	return appendAt(ctx, store, stream, versionOf(state), envs)
}

// readStream is a load for update that folds the whole stream.
func readStream[S any](store domain.EventStore, stream string, fold func([]domain.RecordedEvent) (S, error)) func(context.Context) (S, error) {
	return func(ctx context.Context) (S, error) {
		recs, err := store.ReadStream(ctx, stream)
		if err != nil {
			var zero S
			return zero, fmt.Errorf("read %s: %w", stream, err)
		}
		return fold(recs)
	}
}

// appendAt encodes envs and appends them to stream at version.
func appendAt(ctx context.Context, store domain.EventStore, stream string, version uint64, envs []domain.Envelope) (domain.AppendResult, error) {
	raw, err := domain.EncodeAll(envs)
	if err != nil {
		return domain.AppendResult{}, err
	}
	res, err := store.Append(ctx, stream, domain.ExactVersion(version), raw...)
	if err != nil {
		return domain.AppendResult{}, fmt.Errorf("append to %s: %w", stream, err)
	}
	return res, nil
}

// pause waits until the given time (the next attempt); false when ctx
// ends first.
func pause(ctx context.Context, until time.Time) bool {
	t := time.NewTimer(max(time.Until(until), 0))
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// Contacts is the repository of contact streams. It keeps the decided
// state of the contacts it saw last (a bounded cache keyed by stream
// version), so that a load reads and folds only the events appended since:
// the cost of a webhook does not grow with the contact's history.
type Contacts struct {
	store     domain.EventStore
	conflicts conflicts
	cache     *stateCache
}

// DefaultContactCache is how many contacts' states Contacts keeps when
// not told (about 1 KiB each for a typical user).
const DefaultContactCache = 50_000

// NewContacts is the repository of the contact streams in store, keeping
// the states of up to cacheSize contacts (DefaultContactCache when 0 or
// less).
func NewContacts(store domain.EventStore, cacheSize int) *Contacts {
	if cacheSize <= 0 {
		cacheSize = DefaultContactCache
	}
	return &Contacts{store: store, conflicts: defaultConflicts(), cache: newStateCache(cacheSize)}
}

// Load reads a contact's state: the cached state with the events after
// it folded on, or the whole stream for a contact not cached. The state
// returned is the caller's own: changing it changes nothing cached.
func (c *Contacts) Load(ctx context.Context, id domain.ContactID) (*domain.ContactState, error) {
	return c.cache.load(ctx, c.store, id)
}

// Update loads the contact, asks decide what to append and appends it at
// the version of the state decide leaves: the version loaded, unless
// decide recorded part of its events first (Record). When another writer
// won meanwhile, or decide returns errStale, it loads and decides again,
// pausing a little longer each time.
func (c *Contacts) Update(ctx context.Context, id domain.ContactID, decide func(*domain.ContactState) ([]domain.Envelope, error)) (domain.AppendResult, error) {
	return c.updateWith(ctx, id, c.conflicts, decide)
}

// updateWith is Update with its own conflict policy.
func (c *Contacts) updateWith(ctx context.Context, id domain.ContactID, cf conflicts, decide func(*domain.ContactState) ([]domain.Envelope, error)) (domain.AppendResult, error) {
	return update(ctx, c.store, cf, id.Stream(),
		func(ctx context.Context) (*domain.ContactState, error) { return c.Load(ctx, id) },
		func(s *domain.ContactState) uint64 { return s.Version },
		decide)
}

// knownSettled reports whether the contact's reservations were found to
// be its user's, for the user key names, with no user event since
// (settledOnce).
func (c *Contacts) knownSettled(id domain.ContactID, key string) bool {
	return c.cache.settled(id, key)
}

// markSettled remembers that the contact's reservations are its user's,
// for the user key names, as found in its state at version.
func (c *Contacts) markSettled(id domain.ContactID, key string, version uint64) {
	c.cache.markSettled(id, key, version)
}

// Record appends envs to the contact's stream at s's version and applies
// them to s, for a decision that must record part of its events before it
// can decide the rest.
func (c *Contacts) Record(ctx context.Context, s *domain.ContactState, envs []domain.Envelope) error {
	res, err := appendAt(ctx, c.store, s.ContactID.Stream(), s.Version, envs)
	if err != nil {
		return err
	}
	for _, e := range envs {
		s.Apply(e)
	}
	s.Version = res.Version
	return nil
}

// Unchanged checks that stream is still at version (an empty append).
func (c *Contacts) Unchanged(ctx context.Context, stream string, version uint64) error {
	if _, err := c.store.Append(ctx, stream, domain.ExactVersion(version)); err != nil {
		return fmt.Errorf("check %s: %w", stream, err)
	}
	return nil
}
