package command

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/usersync/usersync/domain"
)

// PasswordReturner sends each generated password to its FunnelKit field,
// retrying with backoff up to a limit, records the result, and destroys the
// password's key once it is returned or given up. Each password is returned
// in its own goroutine, so that one contact's retries never hold back
// another's; Resume picks up at start the returns a stop interrupted (the
// stream, not memory, says how many attempts were made).
//
// With several nodes on one store, every node's returner sees every
// password; only a node whose key store holds the password's key claims
// an attempt (PasswordReturnClaimed, at the version read), and only the
// winning claim writes to FunnelKit. A node without the key waits
// TakeoverAfter past the issuing node's last sign of life, then replaces
// the password (PasswordReplaced: a new password and hash, sealed under a
// key of its own) and returns that one; keys superseded so are shredded
// by the node holding them.
type PasswordReturner struct {
	processManager
	crm      domain.FieldWriter
	keys     domain.Unsealer
	secrets  domain.Secrets
	newKeyID func() string
	takeover time.Duration

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

// keyHolder is a key store that can say whether it holds a key
// (keystore.Keys can). A node claims a return only if it holds the key.
type keyHolder interface {
	Has(ctx context.Context, keyID string) (bool, error)
}

// PendingReturn is a password return still to do after a restart: the
// contact and the key id of its current password (issued or replaced).
type PendingReturn struct {
	ContactID domain.ContactID
	KeyID     string
}

// NewPasswordReturner makes the password-return process manager: it writes
// passwords with crm and unseals and shreds them with keys (which, to
// share returns between nodes, also says which keys it holds: Has). Stop
// it when done.
func NewPasswordReturner(cfg ProcessManagerConfig, crm domain.FieldWriter, keys domain.Unsealer) (*PasswordReturner, error) {
	if err := pmConfigure(PasswordReturnName, &cfg); err != nil {
		return nil, err
	}
	if crm == nil || keys == nil {
		return nil, fmt.Errorf("configure process manager %s: a FieldWriter and an Unsealer are required", PasswordReturnName)
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &PasswordReturner{processManager: newProcessManager(PasswordReturnName, cfg), crm: crm, keys: keys,
		secrets: cfg.Secrets, newKeyID: cfg.NewKeyID, takeover: cfg.TakeoverAfter,
		ctx: ctx, cancel: cancel, inflight: map[string]bool{}, calls: make(chan struct{}, cfg.Concurrency)}, nil
}

// start looks after one password (key keyID of contact id) in the
// background, once at a time per key. It reports false once the returner
// is stopped.
func (p *PasswordReturner) start(id domain.ContactID, wh, keyID string) bool {
	p.flight.Lock()
	defer p.flight.Unlock()
	if p.stopped {
		return false
	}
	if p.inflight[keyID] {
		return true
	}
	p.inflight[keyID] = true
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		defer func() {
			p.flight.Lock()
			delete(p.inflight, keyID)
			p.flight.Unlock()
		}()
		c := p.clock()
		for attempt := 1; ; attempt++ {
			err := p.deliver(p.ctx, c, id, wh, keyID)
			if err == nil || p.ctx.Err() != nil {
				return
			}
			// The store failed, not FunnelKit: try again later.
			p.log.Error("password return interrupted; trying again", "webhook_id", wh, "contact_id", id, "err", err)
			if !c.Wait(p.ctx, c.Now().Add(p.retry.Jittered(attempt, p.rand()))) {
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
			if rec.Type != domain.TypePasswordIssued && rec.Type != domain.TypePasswordReplaced {
				continue
			}
			env, err := domain.Decode(rec)
			if err != nil {
				return fmt.Errorf("resume password return of contact %d: %w", r.ContactID, err)
			}
			if keyOf(env.Event) == r.KeyID {
				p.start(r.ContactID, env.WebhookID, r.KeyID)
			}
		}
	}
	return nil
}

// keyOf is the key of the password an event issues ("" for other events).
func keyOf(e domain.Event) string {
	switch e := e.(type) {
	case domain.PasswordIssued:
		return e.KeyID
	case domain.PasswordReplaced:
		return e.KeyID
	}
	return ""
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

// Handle starts the return of each PasswordIssued and PasswordReplaced;
// other events only move the checkpoint.
func (p *PasswordReturner) Handle(ctx context.Context, rec domain.RecordedEvent) error {
	switch rec.Type {
	case domain.TypePasswordIssued:
	case domain.TypePasswordReplaced:
		p.wake(rec)
	case domain.TypePasswordReturnClaimed, domain.TypePasswordReturned, domain.TypePasswordReturnFailed, domain.TypeOperatorActed:
		// A result, a claim, or an operator's retry (on any node) ends a
		// wait on the stream.
		p.wake(rec)
		return p.done(ctx, rec.Position, false)
	default:
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
	if !p.start(id, env.WebhookID, keyOf(env.Event)) {
		return fmt.Errorf("password return stopping: %w", context.Canceled)
	}
	return p.done(ctx, rec.Position, true)
}

// holds reports whether this node's key store holds keyID. A key store
// that cannot tell is taken to hold every key (one node), and so is every
// store when no Secrets make replacements.
func (p *PasswordReturner) holds(ctx context.Context, keyID string) (bool, error) {
	h, ok := p.keys.(keyHolder)
	if !ok || p.secrets == nil {
		return true, nil
	}
	has, err := h.Has(ctx, keyID)
	if err != nil {
		return false, fmt.Errorf("look up key %s: %w", keyID, err)
	}
	return has, nil
}

// shredHeld shreds the keys among keyIDs this node holds (a key store that
// cannot tell shreds them all; Shred is idempotent).
func (p *PasswordReturner) shredHeld(ctx context.Context, keyIDs ...string) error {
	for _, k := range keyIDs {
		if h, ok := p.keys.(keyHolder); ok {
			has, err := h.Has(ctx, k)
			if err != nil {
				return fmt.Errorf("look up key %s: %w", k, err)
			}
			if !has {
				continue
			}
		}
		if err := p.keys.Shred(ctx, k); err != nil {
			return err
		}
	}
	return nil
}

// deliver looks after the password with key keyID until it is returned,
// given up, replaced, or handed to the node holding its key: each round
// reads the contact's stream and does what domain.NextReturnStep says.
func (p *PasswordReturner) deliver(ctx context.Context, c *clock, id domain.ContactID, wh, keyID string) error {
	for range pmMaxStepsPerRound {
		s, err := p.load(ctx, id)
		if err != nil {
			return err
		}
		pr := s.Password
		if pr == nil || pr.KeyID != keyID {
			// A newer password replaced it: make sure its key is gone
			// here, whichever node holds it.
			return p.shredHeld(ctx, keyID)
		}
		if len(pr.Superseded) > 0 {
			if err := p.shredHeld(ctx, pr.Superseded...); err != nil {
				return err
			}
		}
		if pr.Done {
			// Returned or given up already (a crash or a failed shred may
			// have left the key). Shred is idempotent.
			return p.shredHeld(ctx, keyID)
		}
		have, err := p.holds(ctx, keyID)
		if err != nil {
			return err
		}
		step := domain.NextReturnStep(pr, p.node, have, c.Now(), p.takeover)
		switch step.Kind {
		case domain.StepDone:
			return nil
		case domain.StepWait:
			if !p.waitOn(ctx, c, id, s.Version, step.At) {
				return ctx.Err()
			}
		case domain.StepReplace:
			if err := p.replace(ctx, id, wh, s); err != nil {
				return err
			}
			// Whether it won or lost, the next round reads what the
			// stream holds now; a won replacement has its own key and
			// its own goroutine (started here at once).
			if next := s.Password; next != nil && next.KeyID != keyID {
				p.start(id, wh, next.KeyID)
			}
		case domain.StepClaim:
			done, err := p.attempt(ctx, c, id, wh, s, step.Attempt)
			if err != nil || done {
				return err
			}
		}
	}
	return fmt.Errorf("password return of contact %d: still not settled after %d steps", id, pmMaxStepsPerRound)
}

// attempt claims attempt n of the return at the version s was read at and,
// if the claim wins, makes it; done reports the return settled (returned
// or given up).
func (p *PasswordReturner) attempt(ctx context.Context, c *clock, id domain.ContactID, wh string, s *domain.ContactState, n int) (done bool, err error) {
	pr := s.Password
	// A FunnelKit slot first, then the claim: waiting for a slot would
	// spend the claim's lease.
	select {
	case p.calls <- struct{}{}:
	case <-ctx.Done():
		return false, ctx.Err()
	}
	defer func() { <-p.calls }()
	until := p.now().Add(p.lease).UTC()
	claim := domain.PasswordReturnClaimed{KeyID: pr.KeyID, Field: pr.Field, Attempt: n, Until: until, Node: p.node}
	if err := p.recordAt(ctx, id, wh, domain.ExactVersion(s.Version), claim); err != nil {
		if errors.Is(err, domain.ErrConcurrency) {
			p.lostIfClaimed(ctx, id, pr.KeyID, n)
			return false, nil
		}
		return false, err
	}
	if !domain.MayAct(until, p.now(), p.effect+p.skew) {
		p.log.Warn("password return claim too close to its end; left to expire", "webhook_id", wh, "contact_id", id, "attempt", n, "until", until)
		return false, nil
	}
	if ctx.Err() != nil {
		return false, p.release(ctx, id, wh, pr, n)
	}
	actx, cancel := context.WithTimeout(ctx, p.effect)
	err = p.try(actx, id, pr)
	cancel()
	if err == nil {
		rctx, cancel := settle(ctx)
		defer cancel()
		if err := p.record(rctx, id, wh, domain.PasswordReturned{KeyID: pr.KeyID, Field: pr.Field, Attempt: n}); err != nil {
			return false, err
		}
		p.result("returned")
		p.log.Info("password returned to FunnelKit", "webhook_id", wh, "contact_id", id, "field", pr.Field, "attempt", n)
		return true, p.shredNow(ctx, pr.KeyID)
	}
	if ctx.Err() != nil {
		return false, p.release(ctx, id, wh, pr, n)
	}
	// Every failure is retried, permanent-looking ones too: a wrong
	// application password is fixed by the operator, and giving up
	// destroys the password for good.
	giveUp := n >= p.maxAttempts
	failed := domain.PasswordReturnFailed{KeyID: pr.KeyID, Field: pr.Field, Attempt: n, Error: err.Error(), GaveUp: giveUp}
	if !giveUp {
		failed.NextAttemptAt = p.now().Add(p.retry.Jittered(n, p.rand())).UTC()
	}
	rctx, cancel := settle(ctx)
	defer cancel()
	if err := p.record(rctx, id, wh, failed); err != nil {
		return false, err
	}
	if giveUp {
		p.result("gave_up")
		p.log.Error("password return given up; the key is destroyed", "webhook_id", wh, "contact_id", id, "field", pr.Field, "attempts", n, "err", err)
		return true, p.shredNow(ctx, pr.KeyID)
	}
	p.result("failed")
	p.log.Warn("password return failed; retrying", "webhook_id", wh, "contact_id", id, "attempt", n, "next_attempt_at", failed.NextAttemptAt, "err", err)
	return false, nil
}

// release closes attempt n, which a stop (ctx ended) cut off after its
// claim won, with a failure due again at once (InterruptedAttempt): the
// claim does not hold until its end, so this node's next start, or
// another node taking over, need not wait it out. It returns ctx's error.
func (p *PasswordReturner) release(ctx context.Context, id domain.ContactID, wh string, pr *domain.PasswordReturn, n int) error {
	rctx, cancel := settle(ctx)
	defer cancel()
	failed := domain.PasswordReturnFailed{KeyID: pr.KeyID, Field: pr.Field, Attempt: n, Error: InterruptedAttempt, NextAttemptAt: p.now().UTC()}
	if err := p.record(rctx, id, wh, failed); err != nil {
		p.log.Error("password return attempt interrupted by the stop; its claim holds until its end", "webhook_id", wh, "contact_id", id, "attempt", n, "err", err)
		return errors.Join(ctx.Err(), err)
	}
	p.log.Warn("password return attempt interrupted by the stop; released", "webhook_id", wh, "contact_id", id, "attempt", n)
	return ctx.Err()
}

// shredNow shreds a key whose return was just recorded, even if the
// returner is stopping meanwhile (a stop would otherwise leave the key
// until the next start).
func (p *PasswordReturner) shredNow(ctx context.Context, keyID string) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), pmShredTimeout)
	defer cancel()
	return p.keys.Shred(ctx, keyID)
}

// lostIfClaimed tells OnRaceLost when the append that just failed lost to
// another node's claim of attempt n or replacement of keyID (rather than
// to any other append to the stream).
func (p *PasswordReturner) lostIfClaimed(ctx context.Context, id domain.ContactID, keyID string, n int) {
	s, err := p.load(ctx, id)
	if err != nil {
		return
	}
	if pr := s.Password; pr == nil || pr.KeyID != keyID || pr.Claim != nil && pr.Claim.Attempt >= n {
		p.raceLost()
	}
}

// replace issues a replacement for the contact's current password, whose
// key this node lacks: a new password, hashed and sealed under a new key
// of this node's, recorded at the version s was read at. A lost race
// shreds the new key; the caller reads the stream again either way.
func (p *PasswordReturner) replace(ctx context.Context, id domain.ContactID, wh string, s *domain.ContactState) error {
	old := s.Password
	password, err := p.secrets.NewPassword()
	if err != nil {
		return fmt.Errorf("replace password of contact %d: generate: %w", id, err)
	}
	hash, err := p.secrets.Hash(password)
	if err != nil {
		return fmt.Errorf("replace password of contact %d: hash: %w", id, err)
	}
	keyID := pmReplacementKeyPrefix + id.String() + "-" + p.newKeyID()
	sealed, err := p.secrets.Seal(ctx, keyID, password)
	if err != nil {
		return fmt.Errorf("replace password of contact %d: seal: %w", id, err)
	}
	e := domain.PasswordReplaced{OldKeyID: old.KeyID, KeyID: keyID, Sealed: sealed, Field: old.Field, PasswordHash: hash}
	if err := p.recordAt(ctx, id, wh, domain.ExactVersion(s.Version), e); err != nil {
		if shredErr := p.keys.Shred(ctx, keyID); shredErr != nil {
			p.log.Error("shredding an unused replacement key failed", "contact_id", id, "key_id", keyID, "err", shredErr)
		}
		if errors.Is(err, domain.ErrConcurrency) {
			// Lost to a replacement, or to the issuer's claim of the
			// next attempt (past an expired claim, if any).
			next := old.Attempts + 1
			if old.Claim != nil && old.Claim.Attempt >= next {
				next = old.Claim.Attempt + 1
			}
			p.lostIfClaimed(ctx, id, old.KeyID, next)
			return nil
		}
		return err
	}
	p.log.Warn("password replaced: its key is on a node silent for the take-over delay", "webhook_id", wh, "contact_id", id,
		"old_key_id", old.KeyID, "key_id", keyID, "takeover_after", p.takeover)
	s.Password = &domain.PasswordReturn{KeyID: keyID, Field: old.Field}
	return nil
}

// try makes one attempt, in a FunnelKit slot the caller holds: unseal the
// password and write it to its field.
// The error it returns never holds the password.
func (p *PasswordReturner) try(ctx context.Context, id domain.ContactID, issued *domain.PasswordReturn) error {
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
