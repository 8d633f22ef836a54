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
// contact's user still holds it (owns says whether a user still has what
// the stream reserves); it returns the holder after the attempt and the
// user id the claim is for. decidedAt is the version of contact's state
// the caller decided on; adopt lets a claim of contact in flight for
// another user id stand, and returns that id (a create's address), instead
// of overwriting it (what a login or a changed address does: a login
// follows the address's user id).
//
// Only expected versions make this hold across processes (claims.go's
// locks are per process): a claim is appended at the reservation's
// version read, and whatever it depended on is read fresh in the same
// attempt. Three cases need care when several processes share the store:
//   - the stream already names contact with another user id: an attempt
//     of the same contact elsewhere (a webhook redelivered to two nodes)
//     or an earlier attempt here. If contact's state moved on since the
//     caller decided, the decision is stale (errStale); if the claim is
//     still in flight (no user yet, its webhook open) a create adopts
//     its user id, so that both attempts create the same user and the
//     reservation is right whichever wins; otherwise it is overwritten.
//     Either way a holder counts by the user it has now (owns), not by
//     the id in the claim, so a claim's id left behind by a lost attempt
//     never frees what the contact's user has (settle corrects the id).
//   - the holder has no user because the user is moving to another
//     contact (UserUnlinked recorded, the move's own claim not yet): the
//     user in transit still holds it (holderOf).
//   - the holder is this contact via such a move: the caller decided on a
//     stale state (errStale).
func (p *ProcessWebhook) reserve(ctx context.Context, stream, wh string, contact domain.ContactID, userID string, decidedAt uint64, adopt bool,
	claim func(userID string) domain.Event, owns func(*domain.User) bool) (domain.ContactID, string, error) {
	holder := contact
	err := p.updateReservation(ctx, stream, func(r reservation) ([]domain.Envelope, error) {
		holder = contact
		if r.contact == contact && r.userID == userID {
			return nil, nil // already ours
		}
		if r.contact == contact && r.userID != "" {
			s, err := p.contacts.Load(ctx, contact)
			if err != nil {
				return nil, err
			}
			if s.Version != decidedAt {
				return nil, errDecidedOnStale
			}
			if adopt && s.User == nil && s.MovedTo == 0 && s.Open(r.wh) {
				userID = r.userID // a claim of this contact in flight: the same user
				return nil, nil
			}
		}
		if r.contact != 0 && r.contact != contact {
			// The holder may be a contact whose user is gone: then the
			// address is free.
			h, owner, inFlight, err := p.holderOf(ctx, r)
			if err != nil {
				return nil, err
			}
			switch {
			case inFlight:
				// A claim still being processed (or to be resumed after a
				// crash): not free.
				holder = r.contact
				return nil, nil
			case owner != nil && owns(owner):
				if h.ContactID == contact {
					return nil, errDecidedOnStale // our own user, moving here
				}
				holder = h.ContactID
				return nil, nil
			}
		}
		return []domain.Envelope{p.envelope(wh, claim(userID))}, nil
	})
	if errors.Is(err, errDecidedOnStale) {
		return 0, "", errStale
	}
	if err != nil {
		return 0, "", fmt.Errorf("reserve %s: %w", stream, err)
	}
	return holder, userID, nil
}

// errDecidedOnStale ends a reservation attempt whose caller decided on a
// state that has changed since: the whole webhook is decided again.
var errDecidedOnStale = errors.New("contact changed since the decision")

// maxMoves bounds how far holderOf follows a user from contact to contact.
const maxMoves = 8

// holderOf finds who holds what r reserves: r's contact and its user; or,
// when that contact's user moved on (UserUnlinked) before the move claimed
// the reservation, the contact the user went to, followed up to maxMoves
// times. inFlight reports that r's contact has no user yet and the webhook
// that made the claim is still open.
//
// Moves decided on different nodes at once can unlink each other (each
// checks its own contact, then writes the other's stream: expected
// versions on single streams cannot exclude that), leaving the user on
// no contact. Then the user is not gone: the chain of moves ends without
// it, and holderOf answers r's contact with the user as it was there
// (Former), so that the next webhook for the address links that user
// again instead of creating a second one.
func (p *ProcessWebhook) holderOf(ctx context.Context, r reservation) (h *domain.ContactState, owner *domain.User, inFlight bool, err error) {
	start, err := p.contacts.Load(ctx, r.contact)
	if err != nil {
		return nil, nil, false, err
	}
	if start.User == nil && start.MovedTo == 0 && start.Open(r.wh) {
		return start, nil, true, nil
	}
	h = start
	for range maxMoves {
		if h.User != nil {
			return h, h.User, false, nil
		}
		if h.MovedTo == 0 || h.MovedTo == start.ContactID {
			break
		}
		if h, err = p.contacts.Load(ctx, h.MovedTo); err != nil {
			return nil, nil, false, err
		}
	}
	if h.User != nil {
		return h, h.User, false, nil
	}
	if start.Former != nil {
		return start, start.Former, false, nil // the user lost between moves
	}
	return start, nil, false, nil
}

// emailOwner is the user holding an address and its contact's stream
// version, nil if none. A user moving between contacts is found where it
// went (holderOf).
func (p *ProcessWebhook) emailOwner(ctx context.Context, email string) (*domain.User, uint64, error) {
	r, err := p.readReservation(ctx, domain.EmailStream(email))
	if err != nil || r.contact == 0 {
		return nil, 0, err
	}
	h, owner, _, err := p.holderOf(ctx, r)
	if err != nil || owner == nil || !ownsEmail(email)(owner) {
		return nil, 0, err
	}
	return owner, h.Version, nil
}

// ownsEmail says whether a user still has the address.
func ownsEmail(email string) func(*domain.User) bool {
	return func(u *domain.User) bool { return domain.EmailKey(u.Email) == domain.EmailKey(email) }
}

// ownsLogin says whether a user has the login. A login never changes once
// given; it moves with its user (settle).
func ownsLogin(login string) func(*domain.User) bool {
	return func(u *domain.User) bool {
		return strings.EqualFold(strings.TrimSpace(u.Login), strings.TrimSpace(login))
	}
}

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
		holder, _, err := w.p.reserve(ctx, domain.LoginStream(try), wh, w.id, userID, w.decidedAt, false,
			func(userID string) domain.Event {
				return domain.LoginReserved{Login: try, ContactID: w.id, UserID: userID}
			}, ownsLogin(try))
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
			// The user may be on its way to a third contact (a move
			// another node has not finished): unlink it where it is.
			from := r.contact
			if h, owner, _, err := p.holderOf(ctx, r); err != nil {
				return nil, err
			} else if h != nil && h.User != nil && owner.UserID == u.UserID && h.ContactID != id {
				from = h.ContactID
			}
			_, err := p.contacts.updateWith(ctx, from, p.conflicts, func(old *domain.ContactState) ([]domain.Envelope, error) {
				switch {
				case old.User != nil && old.User.UserID != u.UserID:
					return nil, errHeldByOther
				case old.User == nil && old.Open(r.wh):
					return nil, errClaiming
				case old.User != nil:
					// Only from a current state: a settle decided on a
					// state that has lost the user since (another process
					// moved it on) would move the user back to a contact
					// without it. Checked just before the unlink, by
					// reading this contact again.
					cur, err := p.contacts.Load(ctx, id)
					if err != nil {
						return nil, err
					}
					if cur.User == nil || cur.User.UserID != u.UserID {
						return nil, errMovedOn
					}
					return []domain.Envelope{p.envelope(wh, domain.UserUnlinked{UserID: u.UserID, ToContactID: id})}, nil
				}
				return nil, nil
			})
			switch {
			case errors.Is(err, errHeldByOther), errors.Is(err, errClaiming), errors.Is(err, errMovedOn):
				return nil, err
			case err != nil:
				return nil, fmt.Errorf("unlink user from %s: %w", from.Stream(), err)
			}
		}
		return []domain.Envelope{p.envelope(wh, claim)}, nil
	})
	switch {
	case errors.Is(err, errHeldByOther):
		return nil // another user holds it; nothing to settle
	case errors.Is(err, errClaiming), errors.Is(err, errMovedOn):
		// Another contact is claiming it right now, or this contact's
		// user moved on: the whole webhook is decided again.
		return errStale
	case err != nil:
		return fmt.Errorf("settle %s: %w", stream, err)
	}
	return nil
}

// errHeldByOther, errClaiming and errMovedOn end a settle attempt early
// (see settleStream).
var (
	errHeldByOther = errors.New("held by another user")
	errClaiming    = errors.New("being claimed by another contact")
	errMovedOn     = errors.New("the user moved on from this contact")
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
