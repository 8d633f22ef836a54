// Package command holds usersync's use cases: what it does when a webhook
// arrives and when an event calls for an action in the outside world
// (returning a generated password to FunnelKit, sending the welcome email).
// It depends only on domain and its ports, never on an adapter.
package command

import (
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/usersync/usersync/domain"
)

// Names of the process managers, under which their checkpoints are kept.
const (
	PasswordReturnName = "password_return"
	WelcomeEmailName   = "welcome_email"
)

// ProcessNames lists the process managers' names.
func ProcessNames() []string { return []string{PasswordReturnName, WelcomeEmailName} }

// Checkpoints stores the checkpoints of process managers
// (projections.Views does).
type Checkpoints interface {
	Checkpoint(ctx context.Context, name string) (uint64, error)
	SaveCheckpoint(ctx context.Context, name string, pos uint64) error
}

// ProcessManagerConfig configures a process manager (PasswordReturner,
// Welcomer). Zero values of the optional fields take the defaults listed.
type ProcessManagerConfig struct {
	// Store is where the contact streams are read and the process
	// manager's results (PasswordReturned, WelcomeEmailSent, …) appended.
	// Required.
	Store domain.EventStore
	// Checkpoints keeps the position of the last event handled. Required.
	Checkpoints Checkpoints
	// Retry is the wait between failed attempts, jittered
	// (domain.Backoff.Jittered). The zero value retries at once.
	Retry domain.Backoff
	// Rand draws the jitter of each retry, a number in [0, 1) (default
	// math/rand/v2's Float64). A constant makes the schedule exact.
	Rand func() float64
	// MaxAttempts is how many tries before giving up (default 8).
	MaxAttempts int
	// Concurrency bounds the FunnelKit calls of the PasswordReturner in
	// flight at once, so that resuming a backlog does not flood the site
	// (default 4). The Welcomer sends one email at a time and ignores it.
	Concurrency int
	// Now is the clock of the recorded events (default time.Now).
	Now func() time.Time
	// Log receives what the process manager did (default: discarded). It
	// never receives a password.
	Log *slog.Logger
	// OnResult, if set, is told the outcome of each attempt (for metrics):
	// returned or sent, failed, gave_up.
	OnResult func(outcome string)

	// Several nodes on one store: before each attempt a node appends a
	// claim (PasswordReturnClaimed, WelcomeEmailClaimed) at the version of
	// the contact's stream it read, and acts only if its append won.

	// Node names this node in its claims, the same across its restarts
	// (serve keeps it in the data directory, beside keys.db): a claim of
	// this node found live when no attempt of it is in flight is from
	// before a restart, and is taken over at once instead of waited out.
	// Empty: every live claim is waited out.
	Node string
	// EffectTimeout bounds one attempt's call to FunnelKit or the mail
	// relay (default 30 s; serve gives the FunnelKit client's and the SMTP
	// session's own timeouts). A node whose claim has less than this (and
	// ClockSkew) left does not start the effect.
	EffectTimeout time.Duration
	// ClockSkew is how far apart the nodes' clocks may be (default 5 s;
	// NTP keeps them within milliseconds): a claim's end is read on other
	// nodes' clocks.
	ClockSkew time.Duration
	// Lease is how long a claim holds (default domain.ClaimLease:
	// 2 × EffectTimeout + ClockSkew): an attempt not closed by a result by
	// then is taken as lost (its node died) and the next may be claimed by
	// any node. It must exceed EffectTimeout + ClockSkew.
	Lease time.Duration
	// TakeoverAfter is how long the PasswordReturner of a node that does
	// not hold a password's key waits after the issuing node's last sign
	// of life (the issue, its last claim's end, its last failure's next
	// attempt) before it replaces the password (default 60 s). Only with
	// Secrets.
	TakeoverAfter time.Duration
	// Secrets makes replacement passwords (PasswordReturner). Without it a
	// password whose key this node lacks is tried, and fails, as if the
	// key were here (the behaviour of a single node).
	Secrets domain.Secrets
	// NewKeyID makes the key id of a replacement password, unique across
	// nodes (default: 128 random bits in hex).
	NewKeyID func() string
	// OnRaceLost, if set, is called each time a claim or replacement lost
	// its append to another node's (for metrics).
	OnRaceLost func()
	// Wait waits until the clock (Now) reaches until, or ctx ends, and
	// reports whether it did (default: a timer). Tests with a fixed clock
	// make time pass at once.
	Wait func(ctx context.Context, until time.Time) bool
}

// Defaults of ProcessManagerConfig.
const (
	defaultPMMaxAttempts = 8
	defaultPMConcurrency = 4
)

// Defaults of the claims (ProcessManagerConfig.EffectTimeout, ClockSkew,
// TakeoverAfter; the Lease follows from the first two).
const (
	DefaultEffectTimeout = 30 * time.Second
	DefaultClockSkew     = 5 * time.Second
	DefaultTakeoverAfter = 60 * time.Second
)

const (
	// pmMaxStepsPerRound bounds the decisions one round of a return or a
	// mail makes (lost races, waits) before it counts as a store failure
	// and backs off.
	pmMaxStepsPerRound = 64
	// pmShredTimeout bounds the shredding of a key after its return.
	pmShredTimeout = 10 * time.Second
	// pmReplacementKeyPrefix starts a replacement's key id, as an issued
	// password's (pw-<contact>-<id>).
	pmReplacementKeyPrefix = "pw-"
	// pmSettleTimeout bounds the recording of an attempt's result (or of
	// its interruption) once the effect is over, even if the process
	// manager is stopping meanwhile.
	pmSettleTimeout = 5 * time.Second
)

// InterruptedAttempt is the error recorded (PasswordReturnFailed,
// WelcomeEmailFailed, never given up, the next attempt due at once) for an
// attempt a clean stop cut off after its claim won: its claim is closed
// at once instead of held until its lease ends.
const InterruptedAttempt = "interrupted: the node stopped during the attempt; the next attempt may be made at once"

// setDefaults fills in the optional fields left at their zero value.
func (c *ProcessManagerConfig) setDefaults() {
	if c.MaxAttempts == 0 {
		c.MaxAttempts = defaultPMMaxAttempts
	}
	if c.Concurrency == 0 {
		c.Concurrency = defaultPMConcurrency
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Rand == nil {
		c.Rand = rand.Float64
	}
	if c.Log == nil {
		c.Log = slog.New(slog.DiscardHandler)
	}
	if c.ClockSkew == 0 {
		c.ClockSkew = DefaultClockSkew
	}
	if c.EffectTimeout == 0 {
		c.EffectTimeout = DefaultEffectTimeout
		if c.Lease > 0 {
			c.EffectTimeout = min(DefaultEffectTimeout, (c.Lease-c.ClockSkew)/domain.LeaseFactor)
		}
	}
	if c.Lease == 0 {
		c.Lease = domain.ClaimLease(c.EffectTimeout, c.ClockSkew)
	}
	if c.TakeoverAfter == 0 {
		c.TakeoverAfter = DefaultTakeoverAfter
	}
	if c.NewKeyID == nil {
		c.NewKeyID = randomKeyID
	}
	if c.Wait == nil {
		now := c.Now
		c.Wait = func(ctx context.Context, until time.Time) bool { return pause(ctx, time.Now().Add(until.Sub(now()))) }
	}
}

// randomKeyID is 128 random bits in hex.
func randomKeyID() string {
	var b [16]byte
	_, _ = crand.Read(b[:]) // crypto/rand.Read never fails (Go 1.24+)
	return hex.EncodeToString(b[:])
}

// Validate reports what is missing or wrong in the configuration, after
// the defaults are filled in.
func (c ProcessManagerConfig) Validate() error {
	var errs []error
	if c.Store == nil {
		errs = append(errs, errors.New("Store is required"))
	}
	if c.Checkpoints == nil {
		errs = append(errs, errors.New("Checkpoints is required"))
	}
	if c.MaxAttempts < 0 {
		errs = append(errs, fmt.Errorf("MaxAttempts is %d, want at least 1 (0 for the default %d)", c.MaxAttempts, defaultPMMaxAttempts))
	}
	if c.Concurrency < 0 {
		errs = append(errs, fmt.Errorf("Concurrency is %d, want at least 1 (0 for the default %d)", c.Concurrency, defaultPMConcurrency))
	}
	if c.Lease < 0 || c.EffectTimeout < 0 || c.TakeoverAfter < 0 || c.ClockSkew < 0 {
		errs = append(errs, fmt.Errorf("a negative duration (Lease %s, EffectTimeout %s, ClockSkew %s, TakeoverAfter %s)", c.Lease, c.EffectTimeout, c.ClockSkew, c.TakeoverAfter))
	} else if c.Lease > 0 && c.EffectTimeout+c.ClockSkew >= c.Lease {
		errs = append(errs, fmt.Errorf("EffectTimeout %s + ClockSkew %s is not below Lease %s: a claim must outlast its attempt on every node's clock (leave Lease 0 for 2 × EffectTimeout + ClockSkew)", c.EffectTimeout, c.ClockSkew, c.Lease))
	}
	if c.Retry.Initial < 0 || c.Retry.Max < 0 {
		errs = append(errs, fmt.Errorf("Retry has a negative delay (Initial %s, Max %s)", c.Retry.Initial, c.Retry.Max))
	}
	return errors.Join(errs...)
}

// pmSaveEvery bounds how many events a process manager handles without
// acting before its checkpoint is written anyway.
const pmSaveEvery = 256

// processManager is what the password returner and the welcome mailer
// share: a checkpoint saved after each event they act on (acting is
// idempotent, so an event seen again after a crash is checked and skipped),
// and a bounded retry schedule.
type processManager struct {
	name        string
	store       domain.EventStore
	checkpoints Checkpoints
	retry       domain.Backoff
	rand        func() float64
	maxAttempts int
	now         func() time.Time
	log         *slog.Logger
	onResult    func(outcome string)
	node        string
	lease       time.Duration
	effect      time.Duration
	skew        time.Duration
	onRaceLost  func()
	wait        func(ctx context.Context, until time.Time) bool

	mu    sync.Mutex
	pos   uint64
	saved uint64

	// waiters are the rounds waiting on a contact's stream (waitOn).
	waitMu  sync.Mutex
	waiters map[domain.ContactID]map[*waiter]struct{}
}

// waiter is a round waiting on a contact's stream, read at version.
type waiter struct {
	version uint64
	wake    context.CancelFunc
}

// waitOn waits as c.Wait until until, but ends early when Handle sees an
// event of contact id's stream after version (another node's result or
// release closes the claim waited on). It reports false only if ctx
// ended. Waking is an optimisation: every wait ends at until anyway.
func (p *processManager) waitOn(ctx context.Context, c *clock, id domain.ContactID, version uint64, until time.Time) bool {
	wctx, wake := context.WithCancel(ctx)
	defer wake()
	w := &waiter{version: version, wake: wake}
	p.waitMu.Lock()
	if p.waiters == nil {
		p.waiters = map[domain.ContactID]map[*waiter]struct{}{}
	}
	if p.waiters[id] == nil {
		p.waiters[id] = map[*waiter]struct{}{}
	}
	p.waiters[id][w] = struct{}{}
	p.waitMu.Unlock()
	defer func() {
		p.waitMu.Lock()
		delete(p.waiters[id], w)
		if len(p.waiters[id]) == 0 {
			delete(p.waiters, id)
		}
		p.waitMu.Unlock()
	}()
	// An event appended after the read at version and handed to wake
	// before this waiter was registered would not wake it: look once more,
	// now that any later one will.
	if evs, err := p.store.ReadStreamFrom(ctx, id.Stream(), version); err == nil && len(evs) > 0 {
		return ctx.Err() == nil
	}
	c.Wait(wctx, until)
	return ctx.Err() == nil
}

// wake ends the waits on rec's stream of the rounds that read it before
// rec.
func (p *processManager) wake(rec domain.RecordedEvent) {
	id, ok := domain.ContactIDFromStream(rec.Stream)
	if !ok {
		return
	}
	p.waitMu.Lock()
	defer p.waitMu.Unlock()
	for w := range p.waiters[id] {
		if rec.Version > w.version {
			w.wake()
		}
	}
}

// settle is the context an attempt's result is recorded in once its
// effect is over: a stop meanwhile does not leave the claim open.
func settle(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), pmSettleTimeout)
}

// pmConfigure fills in cfg's defaults and validates it for the process
// manager name.
func pmConfigure(name string, cfg *ProcessManagerConfig) error {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("configure process manager %s: %w", name, err)
	}
	return nil
}

// newProcessManager makes the shared part of the process manager name from
// a configuration pmConfigure accepted.
func newProcessManager(name string, cfg ProcessManagerConfig) processManager {
	return processManager{name: name, store: cfg.Store, checkpoints: cfg.Checkpoints, retry: cfg.Retry, rand: cfg.Rand,
		maxAttempts: cfg.MaxAttempts, now: cfg.Now, log: cfg.Log, onResult: cfg.OnResult,
		node: cfg.Node, lease: cfg.Lease, effect: cfg.EffectTimeout, skew: cfg.ClockSkew, onRaceLost: cfg.OnRaceLost, wait: cfg.Wait}
}

// Name names the process manager and its checkpoint.
func (p *processManager) Name() string { return p.name }

// Position reads the checkpoint: the last event handled or skipped.
func (p *processManager) Position(ctx context.Context) (uint64, error) {
	pos, err := p.checkpoints.Checkpoint(ctx, p.name)
	if err != nil {
		return 0, fmt.Errorf("read checkpoint of %s: %w", p.name, err)
	}
	p.mu.Lock()
	p.pos, p.saved = pos, pos
	p.mu.Unlock()
	return pos, nil
}

// Skip moves the checkpoint past a parked event.
func (p *processManager) Skip(ctx context.Context, position uint64) error {
	return p.done(ctx, position, true)
}

// done moves the checkpoint; acted writes it now (after an action), else
// it is written every pmSaveEvery events. Acting is idempotent, so events
// handled again after a crash are harmless.
func (p *processManager) done(ctx context.Context, position uint64, acted bool) error {
	p.mu.Lock()
	p.pos = max(p.pos, position)
	save := acted || p.pos-p.saved >= pmSaveEvery
	p.mu.Unlock()
	if !save {
		return nil
	}
	if err := p.checkpoints.SaveCheckpoint(ctx, p.name, position); err != nil {
		return fmt.Errorf("save checkpoint of %s at %d: %w", p.name, position, err)
	}
	p.mu.Lock()
	p.saved = max(p.saved, position)
	p.mu.Unlock()
	return nil
}

// Current is the in-memory checkpoint (for metrics).
func (p *processManager) Current() uint64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.pos
}

func (p *processManager) result(outcome string) {
	if p.onResult != nil {
		p.onResult(outcome)
	}
}

// record appends an event caused by the webhook wh to the contact's stream.
func (p *processManager) record(ctx context.Context, id domain.ContactID, wh string, e domain.Event) error {
	return p.recordAt(ctx, id, wh, domain.AnyVersion(), e)
}

// recordAt appends e at the expected version; a lost race is an error
// matching domain.ErrConcurrency.
func (p *processManager) recordAt(ctx context.Context, id domain.ContactID, wh string, expected domain.ExpectedVersion, e domain.Event) error {
	raw, err := domain.Encode(domain.Envelope{Event: e, OccurredAt: p.now().UTC(), WebhookID: wh})
	if err != nil {
		return fmt.Errorf("encode %s: %w", e.EventType(), err)
	}
	if _, err := p.store.Append(ctx, id.Stream(), expected, raw); err != nil {
		return fmt.Errorf("record %s in %s: %w", e.EventType(), id.Stream(), err)
	}
	return nil
}

// load reads and folds a contact's stream.
func (p *processManager) load(ctx context.Context, id domain.ContactID) (*domain.ContactState, error) {
	recs, err := p.store.ReadStream(ctx, id.Stream())
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", id.Stream(), err)
	}
	return domain.LoadContact(id, recs)
}

// raceLost tells OnRaceLost.
func (p *processManager) raceLost() {
	if p.onRaceLost != nil {
		p.onRaceLost()
	}
}

// clock is the process manager's view of the time: its clock, but never
// before a time it already waited for (a fixed test clock then moves on).
type clock struct {
	now     func() time.Time
	waited  time.Time
	waitFor func(ctx context.Context, until time.Time) bool
}

func (p *processManager) clock() *clock { return &clock{now: p.now, waitFor: p.wait} }

// Now is the later of the clock and the last time waited for.
func (c *clock) Now() time.Time {
	if n := c.now(); n.After(c.waited) {
		return n
	}
	return c.waited
}

// Wait waits until until; false if ctx ended first.
func (c *clock) Wait(ctx context.Context, until time.Time) bool {
	if !c.waitFor(ctx, until) {
		return false
	}
	if until.After(c.waited) {
		c.waited = until
	}
	return true
}
