package command

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/usersync/usersync/domain"
)

// Welcomer sends the welcome email of each user created with
// send_notification, retrying with backoff; a failure never blocks the user.
//
// With several nodes on one store every node's welcomer sees every user;
// before each attempt a node claims it (WelcomeEmailClaimed, at the
// version of the contact's stream it read) and only the winner sends. A
// node that finds another's claim live watches it in the background and
// claims the next attempt if the claim expires without a result. Every
// attempt carries the first claim's Message-ID.
type Welcomer struct {
	processManager
	mail domain.Mailer

	ctx      context.Context
	cancel   context.CancelFunc
	wg       sync.WaitGroup
	flight   sync.Mutex
	watching map[string]bool
	stopped  bool
}

// messageIDer is a Mailer that says which Message-ID it gives the welcome
// mail named key (mail.Mailer does); the claim records it.
type messageIDer interface {
	MessageID(key string) string
}

// NewWelcomer makes the welcome-email process manager, which sends with
// mail. Stop it when done.
func NewWelcomer(cfg ProcessManagerConfig, mail domain.Mailer) (*Welcomer, error) {
	if err := pmConfigure(WelcomeEmailName, &cfg); err != nil {
		return nil, err
	}
	if mail == nil {
		return nil, fmt.Errorf("configure process manager %s: a Mailer is required", WelcomeEmailName)
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Welcomer{processManager: newProcessManager(WelcomeEmailName, cfg), mail: mail,
		ctx: ctx, cancel: cancel, watching: map[string]bool{}}, nil
}

// PendingWelcome is a welcome mail still to send after a restart: the
// contact and the user it welcomes (the welcome-mail view lists them).
type PendingWelcome struct {
	ContactID domain.ContactID
	UserID    string
}

// Resume sends in the background, one after another, the welcome mails
// still pending (after a restart): pending are the mails the views show as
// pending. This node's checkpoint may be past their UserCreated (a watch of
// another node's claim that a restart ended, a claim of its own cut off by
// a crash), so without it nothing would send them. A mail another node
// claims is watched, as Handle does; a mail already in hand here is left
// alone, so Resume may run again.
func (w *Welcomer) Resume(ctx context.Context, pending []PendingWelcome) error {
	var jobs []welcomeJob
	for _, p := range pending {
		recs, err := w.store.ReadStream(ctx, p.ContactID.Stream())
		if err != nil {
			return fmt.Errorf("resume welcome email of contact %d: %w", p.ContactID, err)
		}
		for _, rec := range recs {
			if rec.Type != domain.TypeUserCreated {
				continue
			}
			env, err := domain.Decode(rec)
			if err != nil {
				return fmt.Errorf("resume welcome email of contact %d: %w", p.ContactID, err)
			}
			if created := env.Event.(domain.UserCreated); created.UserID == p.UserID && created.WelcomeEmail {
				jobs = append(jobs, welcomeJob{id: p.ContactID, wh: env.WebhookID, created: created})
			}
		}
	}
	w.flight.Lock()
	defer w.flight.Unlock()
	if w.stopped {
		return nil
	}
	mine := jobs[:0]
	for _, j := range jobs {
		if !w.watching[j.created.UserID] {
			w.watching[j.created.UserID] = true
			mine = append(mine, j)
		}
	}
	if len(mine) == 0 {
		return nil
	}
	w.log.Info("resuming welcome emails pending before the last stop", "mails", len(mine))
	w.wg.Add(1)
	go func() {
		defer w.wg.Done()
		for _, j := range mine {
			w.resumeOne(j)
		}
	}()
	return nil
}

// welcomeJob is the welcome mail of one user, as Resume hands it on.
type welcomeJob struct {
	id      domain.ContactID
	wh      string
	created domain.UserCreated
}

// resumeOne makes the attempts left of a resumed mail, which this
// process holds (watching): until it is settled, the welcomer stops, or
// another node's live claim hands it to a watch.
func (w *Welcomer) resumeOne(j welcomeJob) {
	// Any wait (a claim, a retry) goes to a watch: the next resumed mail
	// need not wait for it.
	h := &handOff{waits: true}
	defer func() {
		if !h.done {
			w.flight.Lock()
			delete(w.watching, j.created.UserID)
			w.flight.Unlock()
		}
	}()
	w.keep(w.clock(), j, h)
}

// handOff lets send leave a wait to a watch in the background: a wait for
// another node's live claim, or with waits any wait (a retry's too). done
// reports that it did.
type handOff struct {
	waits bool
	done  bool
}

// keep runs send for the mail j until it is settled, the welcomer stops,
// or (with h) a watch took it over; a failing store is tried again with
// backoff.
func (w *Welcomer) keep(c *clock, j welcomeJob, h *handOff) {
	for round := 1; ; round++ {
		err := w.send(w.ctx, c, j.id, j.wh, j.created, h)
		if err == nil || w.ctx.Err() != nil || h != nil && h.done {
			return
		}
		w.log.Error("welcome email interrupted; trying again", "webhook_id", j.wh, "contact_id", j.id, "err", err)
		if !c.Wait(w.ctx, c.Now().Add(w.retry.Jittered(round, w.rand()))) {
			return
		}
	}
}

// Stop ends the watches of other nodes' claims and waits for them.
func (w *Welcomer) Stop() {
	w.flight.Lock()
	w.stopped = true
	w.cancel()
	w.flight.Unlock()
	w.wg.Wait()
}

// Handle acts on UserCreated with welcome_email; other events only move
// the checkpoint.
func (w *Welcomer) Handle(ctx context.Context, rec domain.RecordedEvent) error {
	switch rec.Type {
	case domain.TypeUserCreated:
		w.wake(rec)
	case domain.TypeWelcomeEmailClaimed, domain.TypeWelcomeEmailSent, domain.TypeWelcomeEmailFailed, domain.TypeOperatorActed:
		w.wake(rec)
		return w.done(ctx, rec.Position, false)
	default:
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
	// One attempt at a time per mail in this process: a mail watched in
	// the background is left to its watch.
	w.flight.Lock()
	busy := w.watching[created.UserID]
	if !busy {
		w.watching[created.UserID] = true
	}
	w.flight.Unlock()
	if busy {
		return w.done(ctx, rec.Position, true)
	}
	h := &handOff{}
	err = w.send(ctx, w.clock(), id, env.WebhookID, created, h)
	if !h.done {
		w.flight.Lock()
		delete(w.watching, created.UserID)
		w.flight.Unlock()
	}
	if err != nil {
		return err
	}
	return w.done(ctx, rec.Position, true)
}

// watch runs send in the background for a mail another node claimed; the
// caller holds the mail (watching) and hands it to the watch, which lets
// it go when done. It reports false if the welcomer is stopped.
func (w *Welcomer) watch(id domain.ContactID, wh string, created domain.UserCreated, c *clock) bool {
	w.flight.Lock()
	defer w.flight.Unlock()
	if w.stopped {
		return false
	}
	w.wg.Add(1)
	go func() {
		defer w.wg.Done()
		defer func() {
			w.flight.Lock()
			delete(w.watching, created.UserID)
			w.flight.Unlock()
		}()
		w.keep(c, welcomeJob{id: id, wh: wh, created: created}, nil)
	}()
	return true
}

// send makes the attempts left for the welcome email of one user, from
// what the contact's stream says was already tried (domain.NextWelcomeStep).
// A permanent failure gives up at once. With h (from Handle and Resume), a
// live claim of another node (with h.waits, any wait) is left to a watch
// in the background, and send returns with h.done; without (in the
// watch), it waits.
func (w *Welcomer) send(ctx context.Context, c *clock, id domain.ContactID, wh string, created domain.UserCreated, h *handOff) error {
	for range pmMaxStepsPerRound {
		s, err := w.load(ctx, id)
		if err != nil {
			return err
		}
		mail := s.Welcome
		if mail == nil || mail.UserID != created.UserID {
			// A later user of the contact has its own mail.
			return nil
		}
		step := domain.NextWelcomeStep(mail, w.node, c.Now())
		switch step.Kind {
		case domain.StepDone:
			return nil
		case domain.StepWait:
			if h != nil && (h.waits || mail.Claim != nil && mail.Claim.Attempt > mail.Attempts) {
				if !w.watch(id, wh, created, c) {
					return fmt.Errorf("welcome email stopping: %w", context.Canceled)
				}
				h.done = true
				return nil
			}
			if !w.waitOn(ctx, c, id, s.Version, step.At) {
				return ctx.Err()
			}
		case domain.StepClaim:
			done, err := w.attempt(ctx, c, id, wh, s, step.Attempt)
			if err != nil || done {
				return err
			}
		}
	}
	return fmt.Errorf("welcome email of contact %d: still not settled after %d steps", id, pmMaxStepsPerRound)
}

// attempt claims attempt n at the version s was read at and, if the claim
// wins, sends; done reports the mail settled (sent or given up).
func (w *Welcomer) attempt(ctx context.Context, c *clock, id domain.ContactID, wh string, s *domain.ContactState, n int) (done bool, err error) {
	mail := s.Welcome
	msgID := mail.MessageID
	if msgID == "" {
		msgID = mail.UserID
		if m, ok := w.mail.(messageIDer); ok {
			msgID = m.MessageID(mail.UserID)
		}
	}
	until := w.now().Add(w.lease).UTC()
	claim := domain.WelcomeEmailClaimed{To: mail.To, Attempt: n, MessageID: msgID, Until: until, Node: w.node}
	if err := w.recordAt(ctx, id, wh, domain.ExactVersion(s.Version), claim); err != nil {
		if errors.Is(err, domain.ErrConcurrency) {
			if s, err := w.load(ctx, id); err == nil && s.Welcome != nil && s.Welcome.Claim != nil && s.Welcome.Claim.Attempt >= n {
				w.raceLost()
			}
			return false, nil
		}
		return false, err
	}
	if !domain.MayAct(until, w.now(), w.effect+w.skew) {
		w.log.Warn("welcome email claim too close to its end; left to expire", "webhook_id", wh, "contact_id", id, "attempt", n, "until", until)
		return false, nil
	}
	if ctx.Err() != nil {
		return false, w.release(ctx, id, wh, mail.To, n)
	}
	sctx, cancel := context.WithTimeout(ctx, w.effect)
	transport, err := w.mail.SendWelcome(sctx, msgID, mail.To, mail.Login)
	cancel()
	if err == nil {
		w.result("sent")
		w.log.Info("welcome email sent", "webhook_id", wh, "contact_id", id, "transport", transport, "attempt", n)
		rctx, cancel := settle(ctx)
		defer cancel()
		return true, w.record(rctx, id, wh, domain.WelcomeEmailSent{To: mail.To, Transport: transport, Attempt: n})
	}
	if ctx.Err() != nil {
		return false, w.release(ctx, id, wh, mail.To, n)
	}
	giveUp := n >= w.maxAttempts || !domain.Temporary(err)
	failed := domain.WelcomeEmailFailed{To: mail.To, Attempt: n, Error: err.Error(), GaveUp: giveUp}
	if !giveUp {
		failed.NextAttemptAt = w.now().Add(w.retry.Jittered(n, w.rand())).UTC()
	}
	rctx, cancel := settle(ctx)
	defer cancel()
	if err := w.record(rctx, id, wh, failed); err != nil {
		return false, err
	}
	if giveUp {
		w.result("gave_up")
		w.log.Error("welcome email given up", "webhook_id", wh, "contact_id", id, "attempts", n, "err", err)
		return true, nil
	}
	w.result("failed")
	w.log.Warn("welcome email failed; retrying", "webhook_id", wh, "contact_id", id, "attempt", n, "err", err)
	return false, nil
}

// release closes attempt n, which a stop (ctx ended) cut off after its
// claim won, with a failure due again at once (InterruptedAttempt), so
// that another node need not wait out the claim. It returns ctx's error.
func (w *Welcomer) release(ctx context.Context, id domain.ContactID, wh, to string, n int) error {
	rctx, cancel := settle(ctx)
	defer cancel()
	failed := domain.WelcomeEmailFailed{To: to, Attempt: n, Error: InterruptedAttempt, NextAttemptAt: w.now().UTC()}
	if err := w.record(rctx, id, wh, failed); err != nil {
		w.log.Error("welcome email attempt interrupted by the stop; its claim holds until its end", "webhook_id", wh, "contact_id", id, "attempt", n, "err", err)
		return errors.Join(ctx.Err(), err)
	}
	w.log.Warn("welcome email attempt interrupted by the stop; released to the other nodes", "webhook_id", wh, "contact_id", id, "attempt", n)
	return ctx.Err()
}
