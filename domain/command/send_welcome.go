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
	handedOff := false
	err = w.send(ctx, w.clock(), id, env.WebhookID, created, &handedOff)
	if !handedOff {
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
		for round := 1; ; round++ {
			err := w.send(w.ctx, c, id, wh, created, nil)
			if err == nil || w.ctx.Err() != nil {
				return
			}
			w.log.Error("welcome email interrupted; trying again", "webhook_id", wh, "contact_id", id, "err", err)
			if !c.Wait(w.ctx, c.Now().Add(w.retry.Jittered(round, w.rand()))) {
				return
			}
		}
	}()
	return true
}

// send makes the attempts left for the welcome email of one user, from
// what the contact's stream says was already tried (domain.NextWelcomeStep).
// A permanent failure gives up at once. With handedOff (from Handle), a
// live claim of another node is left to a watch in the background, and
// send returns with *handedOff true; without (in the watch), it waits.
func (w *Welcomer) send(ctx context.Context, c *clock, id domain.ContactID, wh string, created domain.UserCreated, handedOff *bool) error {
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
			if mail.Claim != nil && mail.Claim.Attempt > mail.Attempts && handedOff != nil {
				if !w.watch(id, wh, created, c) {
					return fmt.Errorf("welcome email stopping: %w", context.Canceled)
				}
				*handedOff = true
				return nil
			}
			if !c.Wait(ctx, step.At) {
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
	if !domain.MayAct(until, w.now(), w.effect) {
		w.log.Warn("welcome email claim too close to its end; left to expire", "webhook_id", wh, "contact_id", id, "attempt", n, "until", until)
		return false, nil
	}
	sctx, cancel := context.WithTimeout(ctx, w.effect)
	transport, err := w.mail.SendWelcome(sctx, msgID, mail.To, mail.Login)
	cancel()
	if err == nil {
		w.result("sent")
		w.log.Info("welcome email sent", "webhook_id", wh, "contact_id", id, "transport", transport, "attempt", n)
		return true, w.record(ctx, id, wh, domain.WelcomeEmailSent{To: mail.To, Transport: transport, Attempt: n})
	}
	if ctx.Err() != nil {
		return false, ctx.Err()
	}
	giveUp := n >= w.maxAttempts || !domain.Temporary(err)
	failed := domain.WelcomeEmailFailed{To: mail.To, Attempt: n, Error: err.Error(), GaveUp: giveUp}
	if !giveUp {
		failed.NextAttemptAt = w.now().Add(w.retry.Jittered(n, w.rand())).UTC()
	}
	if err := w.record(ctx, id, wh, failed); err != nil {
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
