package command

import (
	"context"
	"fmt"
	"strings"
	"sync"

	"github.com/usersync/usersync/domain"
)

// PasswordReturner sends each generated password to its FunnelKit field,
// retrying with backoff up to a limit, records the result, and destroys the
// password's key once it is returned or given up. Each password is returned
// in its own goroutine, so that one contact's retries never hold back
// another's; Resume picks up at start the returns a stop interrupted (the
// stream, not memory, says how many attempts were made).
type PasswordReturner struct {
	processManager
	crm  domain.FieldWriter
	keys domain.Unsealer

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

// PendingReturn is a password return still to do after a restart: the
// contact and the key id of its PasswordIssued event.
type PendingReturn struct {
	ContactID domain.ContactID
	KeyID     string
}

// NewPasswordReturner makes the password-return process manager: it writes
// passwords with crm and unseals and shreds them with keys. Stop it when
// done.
func NewPasswordReturner(cfg ProcessManagerConfig, crm domain.FieldWriter, keys domain.Unsealer) (*PasswordReturner, error) {
	if err := pmConfigure(PasswordReturnName, &cfg); err != nil {
		return nil, err
	}
	if crm == nil || keys == nil {
		return nil, fmt.Errorf("configure process manager %s: a FieldWriter and an Unsealer are required", PasswordReturnName)
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &PasswordReturner{processManager: newProcessManager(PasswordReturnName, cfg), crm: crm, keys: keys,
		ctx: ctx, cancel: cancel, inflight: map[string]bool{}, calls: make(chan struct{}, cfg.Concurrency)}, nil
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
			if !pause(p.ctx, p.nextAttempt(attempt)) {
				return
			}
		}
	}()
	return true
}

// Resume starts the returns still pending (after a restart): pending are
// the password returns the views show as pending.
func (p *PasswordReturner) Resume(ctx context.Context, pending []PendingReturn) error {
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
				return fmt.Errorf("resume password return of contact %d: %w", r.ContactID, err)
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
			failed.NextAttemptAt = p.nextAttempt(attempt).UTC()
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
		if !pause(ctx, failed.NextAttemptAt) {
			return ctx.Err()
		}
	}
}

// try makes one attempt: unseal the password and write it to its field.
// The error it returns never holds the password.
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
			return returnerScrubbedError{msg: strings.ReplaceAll(err.Error(), password, "[redacted]"), err: err}
		}
		return err
	}
	return nil
}

// returnerScrubbedError is an error whose message had the password taken
// out. It keeps the cause's Temporary but not the cause itself, whose
// message holds the password.
type returnerScrubbedError struct {
	msg string
	err error
}

func (s returnerScrubbedError) Error() string   { return s.msg }
func (s returnerScrubbedError) Temporary() bool { return domain.Temporary(s.err) }
