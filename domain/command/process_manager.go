// Package command holds usersync's use cases: what it does when a webhook
// arrives and when an event calls for an action in the outside world
// (returning a generated password to FunnelKit, sending the welcome email).
// It depends only on domain and its ports, never on an adapter.
package command

import (
	"context"
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
}

// Defaults of ProcessManagerConfig.
const (
	defaultPMMaxAttempts = 8
	defaultPMConcurrency = 4
)

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

	mu    sync.Mutex
	pos   uint64
	saved uint64
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
		maxAttempts: cfg.MaxAttempts, now: cfg.Now, log: cfg.Log, onResult: cfg.OnResult}
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

// nextAttempt is when to try again after attempt failures: the jittered
// backoff from now.
func (p *processManager) nextAttempt(attempt int) time.Time {
	return p.now().Add(p.retry.Jittered(attempt, p.rand()))
}

func (p *processManager) result(outcome string) {
	if p.onResult != nil {
		p.onResult(outcome)
	}
}

// record appends an event caused by the webhook wh to the contact's stream.
func (p *processManager) record(ctx context.Context, id domain.ContactID, wh string, e domain.Event) error {
	raw, err := domain.Encode(domain.Envelope{Event: e, OccurredAt: p.now().UTC(), WebhookID: wh})
	if err != nil {
		return fmt.Errorf("encode %s: %w", e.EventType(), err)
	}
	if _, err := p.store.Append(ctx, id.Stream(), domain.AnyVersion(), raw); err != nil {
		return fmt.Errorf("record %s in %s: %w", e.EventType(), id.Stream(), err)
	}
	return nil
}
