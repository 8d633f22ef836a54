package projections

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/usersync/usersync/domain"
)

// Checkpoints stores the checkpoints of process managers (Views does).
type Checkpoints interface {
	Checkpoint(ctx context.Context, name string) (uint64, error)
	SaveCheckpoint(ctx context.Context, name string, pos uint64) error
}

// process is what the password returner and the welcome mailer share: a
// checkpoint saved after each event they act on (acting is idempotent, so
// an event seen again after a crash is checked and skipped), and a bounded
// retry schedule.
type process struct {
	name        string
	store       domain.EventStore
	checkpoints Checkpoints
	retry       domain.Backoff
	maxAttempts int
	now         func() time.Time
	log         *slog.Logger
	onResult    func(outcome string)

	mu    sync.Mutex
	pos   uint64
	saved uint64
}

// saveEvery bounds how many events a process manager handles without acting
// before its checkpoint is written anyway.
const saveEvery = 256

func (p *process) Name() string { return p.name }

func (p *process) Position(ctx context.Context) (uint64, error) {
	pos, err := p.checkpoints.Checkpoint(ctx, p.name)
	if err != nil {
		return 0, err
	}
	p.mu.Lock()
	p.pos, p.saved = pos, pos
	p.mu.Unlock()
	return pos, nil
}

func (p *process) Skip(ctx context.Context, position uint64) error {
	return p.done(ctx, position, true)
}

// done moves the checkpoint; acted writes it now (after an action), else
// it is written every saveEvery events. Acting is idempotent, so events
// handled again after a crash are harmless.
func (p *process) done(ctx context.Context, position uint64, acted bool) error {
	p.mu.Lock()
	p.pos = max(p.pos, position)
	save := acted || p.pos-p.saved >= saveEvery
	p.mu.Unlock()
	if !save {
		return nil
	}
	if err := p.checkpoints.SaveCheckpoint(ctx, p.name, position); err != nil {
		return err
	}
	p.mu.Lock()
	p.saved = max(p.saved, position)
	p.mu.Unlock()
	return nil
}

// Current is the in-memory checkpoint (for metrics).
func (p *process) Current() uint64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.pos
}

func (p *process) result(outcome string) {
	if p.onResult != nil {
		p.onResult(outcome)
	}
}

// record appends an event caused by the webhook wh to the contact's stream.
func (p *process) record(ctx context.Context, id domain.ContactID, wh string, e domain.Event) error {
	raw, err := domain.Encode(domain.Envelope{Event: e, OccurredAt: p.now().UTC(), WebhookID: wh})
	if err != nil {
		return err
	}
	if _, err := p.store.Append(ctx, id.Stream(), domain.AnyVersion(), raw); err != nil {
		return fmt.Errorf("record %s in %s: %w", e.EventType(), id.Stream(), err)
	}
	return nil
}

// pause waits before the next attempt; false when ctx ends first.
func (p *process) pause(ctx context.Context, until time.Time) bool {
	t := time.NewTimer(max(time.Until(until), 0))
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// FieldWriter writes contact fields in the CRM (FunnelKit's POST
// v3/contacts/{id}/fields).
type FieldWriter interface {
	SetFields(ctx context.Context, id domain.ContactID, fields map[string]string) error
}

// Unsealer opens sealed passwords and destroys their keys.
type Unsealer interface {
	Unseal(ctx context.Context, keyID string, sealed []byte) ([]byte, error)
	Shred(ctx context.Context, keyID string) error
}

// PasswordReturner sends each generated password to its FunnelKit field,
// retrying with backoff up to a limit, records the result, and destroys the
// password's key once it is returned or given up. Each password is returned
// in its own goroutine, so that one contact's retries never hold back
// another's; Resume picks up at start the returns a stop interrupted (the
// stream, not memory, says how many attempts were made).
type PasswordReturner struct {
	process
	crm  FieldWriter
	keys Unsealer

	ctx      context.Context
	cancel   context.CancelFunc
	wg       sync.WaitGroup
	flight   sync.Mutex
	inflight map[string]bool
	stopped  bool
	// calls bounds the FunnelKit requests in flight, so that resuming a
	// backlog does not flood the site.
	calls chan struct{}
}

// ProcessConfig configures a process manager.
type ProcessConfig struct {
	Store       domain.EventStore
	Checkpoints Checkpoints
	Retry       domain.Backoff
	// MaxAttempts is how many tries before giving up (default 8).
	MaxAttempts int
	Now         func() time.Time
	Log         *slog.Logger
	// OnResult, if set, is told the outcome of each attempt (for metrics):
	// returned or sent, failed, gave_up.
	OnResult func(outcome string)
	// Concurrency bounds the attempts running at once (default 4).
	Concurrency int
}

func newProcess(name string, cfg ProcessConfig) process {
	if cfg.MaxAttempts <= 0 {
		cfg.MaxAttempts = 8
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return process{name: name, store: cfg.Store, checkpoints: cfg.Checkpoints, retry: cfg.Retry,
		maxAttempts: cfg.MaxAttempts, now: cfg.Now, log: cfg.Log, onResult: cfg.OnResult}
}

// Names of the process managers, under which their checkpoints are kept.
const (
	PasswordReturnName = "password_return"
	WelcomeEmailName   = "welcome_email"
)

// ProcessNames lists the process managers' names.
func ProcessNames() []string { return []string{PasswordReturnName, WelcomeEmailName} }

// NewPasswordReturner makes the password-return process manager.
func NewPasswordReturner(cfg ProcessConfig, crm FieldWriter, keys Unsealer) *PasswordReturner {
	ctx, cancel := context.WithCancel(context.Background())
	return &PasswordReturner{process: newProcess(PasswordReturnName, cfg), crm: crm, keys: keys,
		ctx: ctx, cancel: cancel, inflight: map[string]bool{}, calls: make(chan struct{}, max(cfg.Concurrency, 4))}
}

// start returns one password in the background, once at a time per key.
// It reports false once the returner is stopped.
func (p *PasswordReturner) start(id domain.ContactID, wh string, issued domain.PasswordIssued) bool {
	p.flight.Lock()
	defer p.flight.Unlock()
	if p.stopped {
		return false
	}
	if p.inflight[issued.KeyID] {
		return true
	}
	p.inflight[issued.KeyID] = true
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		defer func() {
			p.flight.Lock()
			delete(p.inflight, issued.KeyID)
			p.flight.Unlock()
		}()
		for attempt := 1; ; attempt++ {
			err := p.deliver(p.ctx, id, wh, issued)
			if err == nil || p.ctx.Err() != nil {
				return
			}
			// The store failed, not FunnelKit: try again later.
			p.log.Error("password return interrupted; trying again", "webhook_id", wh, "contact_id", id, "err", err)
			if !p.pause(p.ctx, p.now().Add(p.retry.Delay(attempt))) {
				return
			}
		}
	}()
	return true
}

// Resume starts the returns still pending (after a restart): pending are
// the rows of the password-return view with status pending.
func (p *PasswordReturner) Resume(ctx context.Context, pending []PasswordReturn) error {
	for _, r := range pending {
		recs, err := p.store.ReadStream(ctx, r.ContactID.Stream())
		if err != nil {
			return fmt.Errorf("resume password return of contact %d: %w", r.ContactID, err)
		}
		for _, rec := range recs {
			if rec.Type != domain.TypePasswordIssued {
				continue
			}
			env, err := domain.Decode(rec)
			if err != nil {
				return err
			}
			if issued := env.Event.(domain.PasswordIssued); issued.KeyID == r.KeyID {
				p.start(r.ContactID, env.WebhookID, issued)
			}
		}
	}
	return nil
}

// Stop cancels the returns in progress (they resume at the next start) and
// waits for them.
func (p *PasswordReturner) Stop() {
	p.flight.Lock()
	p.stopped = true
	p.cancel()
	p.flight.Unlock()
	p.wg.Wait()
}

// Handle starts the return of each PasswordIssued; other events only move
// the checkpoint.
func (p *PasswordReturner) Handle(ctx context.Context, rec domain.RecordedEvent) error {
	if rec.Type != domain.TypePasswordIssued {
		return p.done(ctx, rec.Position, false)
	}
	id, ok := domain.ContactIDFromStream(rec.Stream)
	if !ok {
		return p.done(ctx, rec.Position, false)
	}
	env, err := domain.Decode(rec)
	if err != nil {
		return err
	}
	if !p.start(id, env.WebhookID, env.Event.(domain.PasswordIssued)) {
		return fmt.Errorf("password return stopping: %w", context.Canceled)
	}
	return p.done(ctx, rec.Position, true)
}

// deliver runs the attempts left for one password, from what the contact's
// stream says was already tried.
func (p *PasswordReturner) deliver(ctx context.Context, id domain.ContactID, wh string, issued domain.PasswordIssued) error {
	for {
		recs, err := p.store.ReadStream(ctx, id.Stream())
		if err != nil {
			return fmt.Errorf("read %s: %w", id.Stream(), err)
		}
		s, err := domain.LoadContact(id, recs)
		if err != nil {
			return err
		}
		pr := s.Password
		if pr == nil || pr.KeyID != issued.KeyID || pr.Done {
			// Returned or given up already (a crash or a failed shred may
			// have left the key), or a newer password replaced it: make
			// sure the key is gone. Shred is idempotent.
			return p.keys.Shred(ctx, issued.KeyID)
		}
		attempt := pr.Attempts + 1
		err = p.try(ctx, id, issued)
		if err == nil {
			if err := p.record(ctx, id, wh, domain.PasswordReturned{KeyID: issued.KeyID, Field: issued.Field, Attempt: attempt}); err != nil {
				return err
			}
			p.result("returned")
			p.log.Info("password returned to FunnelKit", "webhook_id", wh, "contact_id", id, "field", issued.Field, "attempt", attempt)
			return p.keys.Shred(ctx, issued.KeyID)
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		// Every failure is retried, permanent-looking ones too: a wrong
		// application password is fixed by the operator, and giving up
		// destroys the password for good.
		giveUp := attempt >= p.maxAttempts
		failed := domain.PasswordReturnFailed{KeyID: issued.KeyID, Field: issued.Field, Attempt: attempt, Error: err.Error(), GaveUp: giveUp}
		if !giveUp {
			failed.NextAttemptAt = p.now().Add(p.retry.Delay(attempt)).UTC()
		}
		if err := p.record(ctx, id, wh, failed); err != nil {
			return err
		}
		if giveUp {
			p.result("gave_up")
			p.log.Error("password return given up; the key is destroyed", "webhook_id", wh, "contact_id", id, "field", issued.Field, "attempts", attempt, "err", err)
			return p.keys.Shred(ctx, issued.KeyID)
		}
		p.result("failed")
		p.log.Warn("password return failed; retrying", "webhook_id", wh, "contact_id", id, "attempt", attempt, "next_attempt_at", failed.NextAttemptAt, "err", err)
		if !p.pause(ctx, failed.NextAttemptAt) {
			return ctx.Err()
		}
	}
}

func (p *PasswordReturner) try(ctx context.Context, id domain.ContactID, issued domain.PasswordIssued) error {
	select {
	case p.calls <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	defer func() { <-p.calls }()
	plain, err := p.keys.Unseal(ctx, issued.KeyID, issued.Sealed)
	if err != nil {
		return fmt.Errorf("unseal password: %w", err)
	}
	defer clear(plain)
	password := string(plain)
	if err := p.crm.SetFields(ctx, id, map[string]string{issued.Field: password}); err != nil {
		// The error is recorded: make sure it cannot carry the password
		// back (a site that echoes the request, say).
		if strings.Contains(err.Error(), password) {
			return scrubbed{msg: strings.ReplaceAll(err.Error(), password, "[redacted]"), err: err}
		}
		return err
	}
	return nil
}

// scrubbed is an error whose message had a secret taken out.
type scrubbed struct {
	msg string
	err error
}

func (s scrubbed) Error() string   { return s.msg }
func (s scrubbed) Temporary() bool { return domain.Temporary(s.err) }

// Mailer sends the welcome email: the login and a login link, never the
// password. transport names how it went out (smtp or outbox).
type Mailer interface {
	SendWelcome(ctx context.Context, to, login string) (transport string, err error)
}

// Welcomer sends the welcome email of each user created with
// send_notification, retrying with backoff; a failure never blocks the user.
type Welcomer struct {
	process
	mail Mailer
}

// NewWelcomer makes the welcome-email process manager.
func NewWelcomer(cfg ProcessConfig, mail Mailer) *Welcomer {
	return &Welcomer{process: newProcess(WelcomeEmailName, cfg), mail: mail}
}

// Handle acts on UserCreated with welcome_email; other events only move
// the checkpoint.
func (w *Welcomer) Handle(ctx context.Context, rec domain.RecordedEvent) error {
	if rec.Type != domain.TypeUserCreated {
		return w.done(ctx, rec.Position, false)
	}
	id, ok := domain.ContactIDFromStream(rec.Stream)
	if !ok {
		return w.done(ctx, rec.Position, false)
	}
	env, err := domain.Decode(rec)
	if err != nil {
		return err
	}
	created := env.Event.(domain.UserCreated)
	if !created.WelcomeEmail {
		return w.done(ctx, rec.Position, false)
	}
	if err := w.send(ctx, id, env.WebhookID, created); err != nil {
		return err
	}
	return w.done(ctx, rec.Position, true)
}

func (w *Welcomer) send(ctx context.Context, id domain.ContactID, wh string, created domain.UserCreated) error {
	for {
		recs, err := w.store.ReadStream(ctx, id.Stream())
		if err != nil {
			return fmt.Errorf("read %s: %w", id.Stream(), err)
		}
		attempts := 0
		for _, r := range recs {
			switch r.Type {
			case domain.TypeWelcomeEmailSent:
				return nil
			case domain.TypeWelcomeEmailFailed:
				env, err := domain.Decode(r)
				if err != nil {
					return err
				}
				f := env.Event.(domain.WelcomeEmailFailed)
				if f.GaveUp {
					return nil
				}
				attempts = f.Attempt
			}
		}
		attempt := attempts + 1
		transport, err := w.mail.SendWelcome(ctx, created.Email, created.Login)
		if err == nil {
			w.result("sent")
			w.log.Info("welcome email sent", "webhook_id", wh, "contact_id", id, "transport", transport, "attempt", attempt)
			return w.record(ctx, id, wh, domain.WelcomeEmailSent{To: created.Email, Transport: transport, Attempt: attempt})
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		giveUp := attempt >= w.maxAttempts || !domain.Temporary(err)
		failed := domain.WelcomeEmailFailed{To: created.Email, Attempt: attempt, Error: err.Error(), GaveUp: giveUp}
		if !giveUp {
			failed.NextAttemptAt = w.now().Add(w.retry.Delay(attempt)).UTC()
		}
		if err := w.record(ctx, id, wh, failed); err != nil {
			return err
		}
		if giveUp {
			w.result("gave_up")
			w.log.Error("welcome email given up", "webhook_id", wh, "contact_id", id, "attempts", attempt, "err", err)
			return nil
		}
		w.result("failed")
		w.log.Warn("welcome email failed; retrying", "webhook_id", wh, "contact_id", id, "attempt", attempt, "err", err)
		if !w.pause(ctx, failed.NextAttemptAt) {
			return ctx.Err()
		}
	}
}
