package command

import (
	"context"
	"fmt"

	"github.com/usersync/usersync/domain"
)

// Welcomer sends the welcome email of each user created with
// send_notification, retrying with backoff; a failure never blocks the user.
type Welcomer struct {
	processManager
	mail domain.Mailer
}

// NewWelcomer makes the welcome-email process manager, which sends with
// mail.
func NewWelcomer(cfg ProcessManagerConfig, mail domain.Mailer) (*Welcomer, error) {
	if err := pmConfigure(WelcomeEmailName, &cfg); err != nil {
		return nil, err
	}
	if mail == nil {
		return nil, fmt.Errorf("configure process manager %s: a Mailer is required", WelcomeEmailName)
	}
	return &Welcomer{processManager: newProcessManager(WelcomeEmailName, cfg), mail: mail}, nil
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

// send makes the attempts left for the welcome email of one user, from
// what the contact's stream says was already tried. A permanent failure
// gives up at once.
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
		transport, err := w.mail.SendWelcome(ctx, created.UserID, created.Email, created.Login)
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
			failed.NextAttemptAt = w.nextAttempt(attempt).UTC()
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
		if !pause(ctx, failed.NextAttemptAt) {
			return ctx.Err()
		}
	}
}
