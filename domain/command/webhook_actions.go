package command

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/usersync/usersync/domain"
)

// update handles update and update_tags, and add for a contact that
// already has a user.
func (w *work) update(ctx context.Context, s *domain.ContactState, pw domain.PendingWebhook, req domain.Request) ([]domain.Event, domain.Event, error) {
	u := s.User
	var events []domain.Event
	if u == nil && req.Email != "" {
		w.claim(emailKey(req.Email))
		owner, version, err := w.p.emailOwner(ctx, req.Email)
		if err != nil {
			return nil, nil, err
		}
		relink := s.Relinks(owner)
		if req.Action == domain.ActionAdd && (owner == nil || (owner.ContactID == w.id && !relink)) {
			// The add planned a link to the address's user, and that user
			// is no longer found there (it moved on meanwhile, maybe on
			// another node): decide the add again.
			return nil, nil, errStale
		}
		if owner != nil && (owner.ContactID != w.id || relink) {
			// The link copies the owner as read: it must still be so when
			// the link is recorded (finish checks).
			w.owner = &ownerRead{contact: owner.ContactID, version: version}
			c, err := w.contactFromCRM(ctx)
			if err != nil {
				return nil, nil, err
			}
			linked, _ := domain.DecideLink(owner, c)
			events = append(events, linked)
			u = domain.EvolveUser(nil, w.id, domain.Envelope{Event: linked, OccurredAt: w.p.now()})
		}
	}
	if u == nil {
		return nil, domain.WebhookIgnored{WebhookID: pw.WebhookID, Action: req.Action, Reason: "No matching user found"}, nil
	}
	tags, err := w.tagsFor(ctx, req)
	if err != nil {
		return nil, nil, err
	}
	var notes []string
	events = append(events, domain.DecideTags(u, tags)...)
	if req.Action != domain.ActionUpdateTags {
		c, err := w.contactFromCRM(ctx)
		if err != nil {
			return nil, nil, err
		}
		events = append(events, w.p.policy.UpdateMeta(u, c)...)
		emailEvents, note, err := w.changeEmail(ctx, u, c.Email)
		if err != nil {
			return nil, nil, err
		}
		events = append(events, emailEvents...)
		notes = appendNote(notes, note)
		roleEvents, note := domain.DecideRole(w.p.policy, u, req.Role)
		events = append(events, roleEvents...)
		notes = appendNote(notes, note)
	}
	msg := "No changes"
	if len(events) > 0 {
		msg = "User updated"
		if _, ok := events[0].(domain.UserLinked); ok {
			msg = "Linked the existing user with this email"
		}
	}
	return events, processed(pw, req, u.UserID, msg, events, notes), nil
}

// changeEmail reserves a changed address for the user before it is recorded.
func (w *work) changeEmail(ctx context.Context, u *domain.User, email string) ([]domain.Event, string, error) {
	email = domain.NormalizeEmail(email)
	if email == "" || domain.EmailKey(email) == domain.EmailKey(u.Email) || !domain.ValidEmail(email) {
		events, note := domain.DecideEmail(u, email, true)
		return events, note, nil
	}
	if !w.claim(emailKey(email)) {
		return nil, "email not changed: " + email + " is being claimed by another webhook; send update again", nil
	}
	owner, _, err := w.p.reserve(ctx, domain.EmailStream(email), w.wh, w.id, u.UserID, w.decidedAt, false,
		func(userID string) domain.Event {
			return domain.EmailReserved{Email: email, ContactID: w.id, UserID: userID}
		}, ownsEmail(email))
	if err != nil {
		return nil, "", err
	}
	events, note := domain.DecideEmail(u, email, owner == w.id)
	return events, note, nil
}

func (w *work) add(ctx context.Context, s *domain.ContactState, pw domain.PendingWebhook, req domain.Request) ([]domain.Event, domain.Event, error) {
	c, err := w.contactFromCRM(ctx)
	if err != nil {
		return nil, nil, err
	}
	var owner *domain.User
	if s.User == nil && c.Email != "" {
		w.claim(emailKey(c.Email))
		if owner, _, err = w.p.emailOwner(ctx, c.Email); err != nil {
			return nil, nil, err
		}
	}
	plan, err := domain.PlanAdd(s, c, owner)
	if err != nil {
		return nil, nil, domain.Fail(domain.ErrImportFailed, "Import user failed: "+err.Error())
	}
	switch plan {
	case domain.AddAsUpdate:
		return w.update(ctx, s, pw, req)
	case domain.AddLink:
		req.Email = c.Email
		return w.update(ctx, s, pw, req)
	}
	// Create: claim the address first; if another contact won it meanwhile,
	// decide again (it will link).
	// (A claim of this contact's still in flight, made by another attempt
	// of the same webhook, lends its user id: both attempts create the
	// same user, whichever is recorded.)
	holder, userID, err := w.p.reserve(ctx, domain.EmailStream(c.Email), pw.WebhookID, w.id, w.p.newID(), w.decidedAt, true,
		func(userID string) domain.Event {
			return domain.EmailReserved{Email: domain.NormalizeEmail(c.Email), ContactID: w.id, UserID: userID}
		}, ownsEmail(c.Email))
	if err != nil {
		return nil, nil, err
	}
	if holder != w.id {
		return nil, nil, errStale
	}
	login, err := w.claimLogin(ctx, pw.WebhookID, w.p.policy.LoginFor(c), userID)
	if err != nil {
		return nil, nil, err
	}
	creds, err := w.credentials(ctx, c)
	if err != nil {
		return nil, nil, err
	}
	n := domain.NewUser{UserID: userID, Login: login, PasswordHash: creds.hash, RequestedRole: req.Role, WelcomeEmail: req.SendNotification}
	if creds.keyID != "" {
		n.Issued = &domain.PasswordIssued{KeyID: creds.keyID, Sealed: creds.sealed, Field: w.p.policy.PasswordField}
	}
	events, note := domain.DecideCreate(w.p.policy, c, n)
	return events, processed(pw, req, userID, "User created", events, appendNote(nil, note)), nil
}

// credentials makes the new user's password once per Next: the mapped
// password field, or a generated one sealed for return to the CRM.
func (w *work) credentials(ctx context.Context, c domain.CRMContact) (*credentials, error) {
	if w.creds != nil {
		return w.creds, nil
	}
	password, fromCRM := w.p.policy.PasswordFrom(c)
	if !fromCRM {
		var err error
		if password, err = w.p.secrets.NewPassword(); err != nil {
			return nil, fmt.Errorf("generate password: %w", err)
		}
	}
	hash, err := w.p.secrets.Hash(password)
	if err != nil {
		return nil, fmt.Errorf("hash password: %w", err)
	}
	creds := &credentials{hash: hash}
	if !fromCRM && w.p.policy.PasswordField != "" {
		creds.keyID = "pw-" + w.id.String() + "-" + w.p.newID()
		if creds.sealed, err = w.p.secrets.Seal(ctx, creds.keyID, password); err != nil {
			return nil, fmt.Errorf("seal password: %w", err)
		}
	}
	w.creds = creds
	return creds, nil
}

func appendNote(notes []string, note string) []string {
	if note != "" {
		notes = append(notes, note)
	}
	return notes
}

func processed(pw domain.PendingWebhook, req domain.Request, userID, msg string, events []domain.Event, notes []string) domain.WebhookProcessed {
	changed := make([]string, 0, len(events))
	for _, e := range events {
		changed = append(changed, e.EventType())
	}
	if len(notes) > 0 {
		msg += " (" + strings.Join(notes, "; ") + ")"
	}
	return domain.WebhookProcessed{WebhookID: pw.WebhookID, Action: req.Action, Message: msg, UserID: userID, Changed: changed}
}

// finish is the end of a decision: events, then the outcome, for the
// contact's stream at the version it was read at. A user that moved here
// takes its email and login reservations along first (settle): the user
// is recorded first, then the reservations move, then the outcome
// follows, so that a crash or a conflict in between leaves the webhook
// open and its next attempt finishes the move (settle is idempotent).
func (w *work) finish(ctx context.Context, s *domain.ContactState, pw domain.PendingWebhook, events []domain.Event, outcome domain.Event, cause error) ([]domain.Envelope, Outcome, error) {
	envs := make([]domain.Envelope, 0, len(events)+1)
	for _, e := range events {
		envs = append(envs, w.p.envelope(pw.WebhookID, e))
	}
	// Apply the decision to a copy of the state to see the user after it.
	after := *s
	after.Webhooks = map[string]bool{}
	after.Pending = slices.Clone(s.Pending)
	if s.User != nil {
		after.User = cloneUser(s.User)
	}
	for _, e := range envs {
		after.Apply(e)
	}
	if after.User != nil {
		// Reservations change only from a current state (a stale one
		// could move the user back): settle checks this contact still
		// has the user before it unlinks another. The claim locks spare
		// this process its own races.
		if !w.claim(emailKey(after.User.Email)) || !w.claim(loginKey(after.User.Login)) {
			return nil, Outcome{}, errClaimBusy
		}
		if s.User != nil && domain.EmailKey(s.User.Email) != domain.EmailKey(after.User.Email) {
			if !w.claim(emailKey(s.User.Email)) {
				return nil, Outcome{}, errClaimBusy // the address given up is being claimed
			}
			w.releaseEmail = s.User.Email
		}
		if o := w.owner; o != nil {
			// The user a link copies must not have changed since it was read.
			if err := w.p.contacts.Unchanged(ctx, o.contact.Stream(), o.version); err != nil {
				if errors.Is(err, domain.ErrConcurrency) {
					err = fmt.Errorf("%w: %w", errStale, err) // a race of the claim, not of this stream
				}
				return nil, Outcome{}, err
			}
		}
		settled, err := w.p.settledOnce(ctx, w.id, after.User, s.Version)
		if err != nil {
			return nil, Outcome{}, err
		}
		if !settled {
			// The address or login is reserved for another contact: the
			// user moved here.
			if len(envs) == 0 {
				if err := w.p.contacts.Unchanged(ctx, w.id.Stream(), s.Version); err != nil {
					return nil, Outcome{}, err
				}
			} else {
				if err := w.p.contacts.Record(ctx, s, envs); err != nil {
					return nil, Outcome{}, err
				}
				w.used = true
				envs = envs[:0]
			}
			if err := w.p.settle(ctx, pw.WebhookID, w.id, after.User); err != nil {
				return nil, Outcome{}, err
			}
		}
	}
	envs = append(envs, w.p.envelope(pw.WebhookID, outcome))
	return envs, outcomeOf(pw, w.id, outcome, cause), nil
}
