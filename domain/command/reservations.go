package command

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/usersync/usersync/domain"
)

// An email address or a login belongs to one user: its reservation stream
// (email-…, login-…) says which contact holds it. A claim is appended at
// the version read, so two contacts never both win one; the claim locks
// (claims.go) only spare this process the lost races.

// reservation is the holder of a reservation stream.
type reservation struct {
	contact domain.ContactID
	userID  string
	// wh is the webhook whose processing wrote the reservation.
	wh      string
	version uint64
}

func loadReservation(recs []domain.RecordedEvent) (reservation, error) {
	var r reservation
	for _, rec := range recs {
		env, err := domain.Decode(rec)
		if err != nil {
			return reservation{}, fmt.Errorf("load %s: %w", rec.Stream, err)
		}
		switch e := env.Event.(type) {
		case domain.EmailReserved:
			r.contact, r.userID, r.wh = e.ContactID, e.UserID, env.WebhookID
		case domain.LoginReserved:
			r.contact, r.userID, r.wh = e.ContactID, e.UserID, env.WebhookID
		case domain.EmailReleased:
			if e.ContactID == r.contact {
				r.contact, r.userID, r.wh = 0, "", ""
			}
		}
		r.version = rec.Version
	}
	return r, nil
}

func reservationVersion(r reservation) uint64 { return r.version }

func (p *ProcessWebhook) readReservation(ctx context.Context, stream string) (reservation, error) {
	return readStream(p.store, stream, loadReservation)(ctx)
}

// updateReservation is the update loop over a reservation stream.
func (p *ProcessWebhook) updateReservation(ctx context.Context, stream string, decide func(reservation) ([]domain.Envelope, error)) error {
	_, err := update(ctx, p.store, p.conflicts, stream, readStream(p.store, stream, loadReservation), reservationVersion, decide)
	return err
}

// reserve claims a reservation stream for contact's user unless another
// contact's user still holds it (owns says whether a user still owns what
// the stream reserves); it returns the holder after the attempt.
func (p *ProcessWebhook) reserve(ctx context.Context, stream, wh string, contact domain.ContactID, userID string, claim domain.Event, owns func(*domain.User) bool) (domain.ContactID, error) {
	holder := contact
	err := p.updateReservation(ctx, stream, func(r reservation) ([]domain.Envelope, error) {
		holder = contact
		if r.contact == contact && r.userID == userID {
			return nil, nil // already ours
		}
		if r.contact != 0 && r.contact != contact {
			// The holder may be a contact whose user is gone: then the
			// address is free.
			h, err := p.contacts.Load(ctx, r.contact)
			if err != nil {
				return nil, err
			}
			if h.User != nil && h.User.UserID == r.userID && owns(h.User) {
				holder = r.contact
				return nil, nil
			}
			if h.User == nil && h.Open(r.wh) {
				// A claim still being processed (or to be resumed after a
				// crash): not free.
				holder = r.contact
				return nil, nil
			}
		}
		return []domain.Envelope{p.envelope(wh, claim)}, nil
	})
	if err != nil {
		return 0, fmt.Errorf("reserve %s: %w", stream, err)
	}
	return holder, nil
}

// emailOwner is the user holding an address and its stream version, nil
// if none.
func (p *ProcessWebhook) emailOwner(ctx context.Context, email string) (*domain.User, uint64, error) {
	r, err := p.readReservation(ctx, domain.EmailStream(email))
	if err != nil || r.contact == 0 {
		return nil, 0, err
	}
	s, err := p.contacts.Load(ctx, r.contact)
	if err != nil {
		return nil, 0, err
	}
	if s.User == nil || s.User.UserID != r.userID || domain.EmailKey(s.User.Email) != domain.EmailKey(email) {
		return nil, 0, nil
	}
	return s.User, s.Version, nil
}

// ownsEmail says whether a user still has the address.
func ownsEmail(email string) func(*domain.User) bool {
	return func(u *domain.User) bool { return domain.EmailKey(u.Email) == domain.EmailKey(email) }
}

// ownsLogin: a login never changes once given; it moves with its user
// (settle).
func ownsLogin(*domain.User) bool { return true }

// claimLogin reserves login, or login2, login3… on a clash.
func (w *work) claimLogin(ctx context.Context, wh, login string, userID string) (string, error) {
	for i := 1; i <= 100; i++ {
		try := login
		if i > 1 {
			try = login + strconv.Itoa(i)
		}
		key := loginKey(try)
		if !w.claim(key) {
			continue // another webhook is claiming it right now
		}
		holder, err := w.p.reserve(ctx, domain.LoginStream(try), wh, w.id, userID,
			domain.LoginReserved{Login: try, ContactID: w.id, UserID: userID}, ownsLogin)
		if err != nil {
			return "", err
		}
		if holder == w.id {
			return try, nil
		}
		w.unclaim(key)
	}
	return "", domain.Fail(domain.ErrImportFailed, fmt.Sprintf("Import user failed: logins %s to %s100 are all taken", login, login))
}

// settled reports whether the user's email and login reservations already
// point at contact id.
func (p *ProcessWebhook) settled(ctx context.Context, id domain.ContactID, u *domain.User) (bool, error) {
	for _, stream := range []string{domain.EmailStream(u.Email), domain.LoginStream(u.Login)} {
		r, err := p.readReservation(ctx, stream)
		if err != nil {
			return false, err
		}
		if r.contact != id || r.userID != u.UserID {
			return false, nil
		}
	}
	return true, nil
}

// settledOnce is settled, remembered: once the user's reservations point
// at contact id they stay there for as long as the contact's user is
// that user with that address and login. Another contact takes them only
// after unlinking the user from id (settleStream), or when the user no
// longer owns them (reserve); the contact gives an address up only after
// changing it (release). Each of those is a user event in id's stream or
// a change of the key remembered, and either forgets it (stateCache). So
// a webhook of a settled contact reads no reservation stream. version is
// the version of the state u was decided on.
func (p *ProcessWebhook) settledOnce(ctx context.Context, id domain.ContactID, u *domain.User, version uint64) (bool, error) {
	key := settledKey(u)
	if p.contacts.knownSettled(id, key) {
		return true, nil
	}
	ok, err := p.settled(ctx, id, u)
	if ok && err == nil {
		p.contacts.markSettled(id, key, version)
	}
	return ok, err
}

// settledKey names a user with its address and login.
func settledKey(u *domain.User) string {
	return u.UserID + "\x00" + domain.EmailKey(u.Email) + "\x00" + strings.ToLower(strings.TrimSpace(u.Login))
}

// settle makes the user's email and login reservations point at contact id:
// a user that moved here (UserLinked) takes them along, and the contact it
// left loses the user. It is idempotent, so the next attempt of a webhook
// whose move a crash interrupted finishes it.
func (p *ProcessWebhook) settle(ctx context.Context, wh string, id domain.ContactID, u *domain.User) error {
	if err := p.settleStream(ctx, wh, id, u, domain.EmailStream(u.Email), domain.EmailReserved{Email: u.Email, ContactID: id, UserID: u.UserID}); err != nil {
		return err
	}
	return p.settleStream(ctx, wh, id, u, domain.LoginStream(u.Login), domain.LoginReserved{Login: u.Login, ContactID: id, UserID: u.UserID})
}

func (p *ProcessWebhook) settleStream(ctx context.Context, wh string, id domain.ContactID, u *domain.User, stream string, claim domain.Event) error {
	err := p.updateReservation(ctx, stream, func(r reservation) ([]domain.Envelope, error) {
		if r.contact == id && r.userID == u.UserID {
			return nil, nil
		}
		if r.contact != 0 && r.contact != id {
			_, err := p.contacts.Update(ctx, r.contact, func(old *domain.ContactState) ([]domain.Envelope, error) {
				switch {
				case old.User != nil && old.User.UserID != u.UserID:
					return nil, errHeldByOther
				case old.User == nil && old.Open(r.wh):
					return nil, errClaiming
				case old.User != nil:
					return []domain.Envelope{p.envelope(wh, domain.UserUnlinked{UserID: u.UserID, ToContactID: id})}, nil
				}
				return nil, nil
			})
			switch {
			case errors.Is(err, errHeldByOther), errors.Is(err, errClaiming):
				return nil, err
			case err != nil:
				return nil, fmt.Errorf("unlink user from %s: %w", r.contact.Stream(), err)
			}
		}
		return []domain.Envelope{p.envelope(wh, claim)}, nil
	})
	switch {
	case errors.Is(err, errHeldByOther):
		return nil // another user holds it; nothing to settle
	case errors.Is(err, errClaiming):
		// Another contact is claiming it right now: the whole webhook is
		// decided again.
		return errStale
	case err != nil:
		return fmt.Errorf("settle %s: %w", stream, err)
	}
	return nil
}

// errHeldByOther and errClaiming end a settle attempt early (see settleStream).
var (
	errHeldByOther = errors.New("held by another user")
	errClaiming    = errors.New("being claimed by another contact")
)

// release frees an address the contact's user no longer has. It is
// bookkeeping only: a reservation whose holder no longer has the address is
// free anyway, so a failure here changes nothing.
func (p *ProcessWebhook) release(ctx context.Context, wh string, id domain.ContactID, email string) {
	r, err := p.readReservation(ctx, domain.EmailStream(email))
	if err != nil || r.contact != id {
		return
	}
	_, _ = appendAt(ctx, p.store, domain.EmailStream(email), r.version,
		[]domain.Envelope{p.envelope(wh, domain.EmailReleased{Email: domain.NormalizeEmail(email), ContactID: id})})
}

func emailKey(email string) string { return "email:" + domain.EmailKey(email) }
func loginKey(login string) string { return "login:" + strings.ToLower(login) }
