package command

import (
	"context"
	"errors"
	"fmt"

	"github.com/usersync/usersync/domain"
)

// Errors of an operator's retry, for the console to say why there is
// nothing to retry.
var (
	// ErrNothingToRetry: the contact has no return or mail waiting, or it
	// is done (returned, sent).
	ErrNothingToRetry = errors.New("nothing to retry: no password return or welcome email of this contact is waiting")
	// ErrKeyDestroyed: the return was given up and its password's key
	// destroyed, so the password can never be returned; a new one comes
	// with the contact's next user creation.
	ErrKeyDestroyed = errors.New("the password return was given up and its key destroyed: it cannot be retried")
)

// Retry is an operator's retry of contact id's password return: by (its
// action, source and credential; Action is set here) is recorded in the
// contact's stream, which makes the next attempt due at once
// (domain.ContactState.Apply), and the return is taken up at once: woken
// if it waits here, started if no round of this process has it.
func (p *PasswordReturner) Retry(ctx context.Context, id domain.ContactID, by domain.OperatorActed) error {
	s, err := p.load(ctx, id)
	if err != nil {
		return err
	}
	pr := s.Password
	switch {
	case pr == nil || pr.Done && !pr.GaveUp:
		return ErrNothingToRetry
	case pr.GaveUp:
		return ErrKeyDestroyed
	}
	by.Action = domain.ActionRetryPasswordReturn
	if err := p.record(ctx, id, "", by); err != nil {
		return err
	}
	p.wakeAll(id)
	return p.Resume(ctx, []PendingReturn{{ContactID: id, KeyID: pr.KeyID}})
}

// Retry is an operator's retry of contact id's welcome email, waiting for
// its next attempt or given up: by is recorded in the contact's stream
// (Action set here), which makes the next attempt due at once, a given-up
// mail open again for one attempt more; the mail is taken up at once.
func (w *Welcomer) Retry(ctx context.Context, id domain.ContactID, by domain.OperatorActed) error {
	s, err := w.load(ctx, id)
	if err != nil {
		return err
	}
	m := s.Welcome
	if m == nil || m.Done && !m.GaveUp {
		return ErrNothingToRetry
	}
	by.Action = domain.ActionRetryWelcomeEmail
	if err := w.record(ctx, id, "", by); err != nil {
		return err
	}
	w.wakeAll(id)
	if err := w.Resume(ctx, []PendingWelcome{{ContactID: id, UserID: m.UserID}}); err != nil {
		return fmt.Errorf("retry welcome email of contact %d: %w", id, err)
	}
	return nil
}

// wakeAll ends every wait on contact id's stream (an operator's retry
// makes the next attempt due now).
func (p *processManager) wakeAll(id domain.ContactID) {
	p.waitMu.Lock()
	defer p.waitMu.Unlock()
	for w := range p.waiters[id] {
		w.wake()
	}
}
