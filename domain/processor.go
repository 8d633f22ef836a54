package domain

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// CRM is the port to the CRM (FunnelKit) the processor reads contacts from.
type CRM interface {
	Contact(ctx context.Context, id ContactID) (CRMContact, error)
	Tags(ctx context.Context) ([]Tag, error)
}

// Secrets is the port that makes passwords: generation needs randomness,
// sealing needs the key store.
type Secrets interface {
	NewPassword() (string, error)
	Hash(password string) (string, error)
	// Seal stores a fresh key under keyID and returns the password sealed with it.
	Seal(ctx context.Context, keyID, password string) ([]byte, error)
	// Shred destroys a key; what it sealed is unreadable from then on.
	Shred(ctx context.Context, keyID string) error
}

// Temporary reports whether err says to try again later: the CRM was
// unreachable or answered 5xx. Adapters mark such errors with a
// Temporary() bool method.
func Temporary(err error) bool {
	var t interface{ Temporary() bool }
	return errors.As(err, &t) && t.Temporary()
}

// Outcome statuses of a webhook.
const (
	StatusQueued    = "queued"
	StatusRetrying  = "retrying"
	StatusProcessed = "processed"
	StatusIgnored   = "ignored"
	StatusFailed    = "failed"
)

// Outcome is what processing a webhook ended with.
type Outcome struct {
	WebhookID string
	ContactID ContactID
	Status    string
	// HTTPStatus is the status a webhook answer gives for this outcome.
	HTTPStatus int
	Message    string
	UserID     string
	// Position is the global position of the last event appended.
	Position uint64
	// RetryAt is when a retrying webhook is tried again.
	RetryAt time.Time
}

// Success reports whether the webhook answer says success: true.
func (o Outcome) Success() bool { return o.Status == StatusProcessed }

// Backoff is an exponential retry schedule.
type Backoff struct {
	Initial time.Duration
	Max     time.Duration
}

// Delay is the wait before attempt n+1 after n failures (n ≥ 1).
func (b Backoff) Delay(n int) time.Duration {
	d := b.Initial
	for i := 1; i < n && d < b.Max; i++ {
		d *= 2
	}
	return min(d, b.Max)
}

// Processor processes recorded webhooks: it reads the contact from the CRM,
// decides, and appends the events and the webhook's outcome. It is safe for
// concurrent use; callers process one contact at a time in order (the
// expected-version checks keep the streams consistent either way).
type Processor struct {
	Policy  Policy
	Store   EventStore
	CRM     CRM
	Secrets Secrets
	// NewID makes user ids.
	NewID func() string
	Now   func() time.Time
	Retry Backoff

	locks keyLocks
}

// maxConflicts bounds how often one webhook is decided again after another
// writer appended to a stream it read.
const maxConflicts = 20

// errConflict asks processNext's caller to reload and decide again.
var errConflict = errors.New("stream changed while deciding")

// ProcessNext processes the oldest open webhook of a contact. ok is false
// when the contact has none. A store error is returned as err; the webhook
// stays open and the caller tries again later.
func (p *Processor) ProcessNext(ctx context.Context, id ContactID) (out Outcome, ok bool, err error) {
	w := &work{p: p, id: id}
	defer w.cleanup(ctx)
	for i := range maxConflicts {
		out, ok, err = w.once(ctx)
		if !errors.Is(err, errConflict) {
			return out, ok, err
		}
		// Another webhook holds what this one needs: let it finish.
		t := time.NewTimer(time.Duration(i+1) * time.Millisecond)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return out, false, ctx.Err()
		}
	}
	return out, ok, fmt.Errorf("process contact %d: gave up after %d concurrent changes", id, maxConflicts)
}

// work is one ProcessNext call: what it read from the CRM and the password
// it made survive a conflict and a new decision.
type work struct {
	p       *Processor
	id      ContactID
	wh      string
	contact *CRMContact
	// contactErr is the CRM's failure, kept like its answer: a decision
	// made again after a conflict sees the same CRM answer.
	contactErr error
	catalog    []Tag
	// held are the claim locks this attempt holds (see keyLocks).
	held map[string]func()
	// owner is the other contact a link copies its user from, as read.
	owner *ownerRead
	creds *credentials
	used  bool
}

type credentials struct {
	hash   string
	keyID  string
	sealed []byte
}

// cleanup shreds a password key that was made but never recorded.
func (w *work) cleanup(ctx context.Context) {
	if w.creds != nil && w.creds.keyID != "" && !w.used {
		_ = w.p.Secrets.Shred(context.WithoutCancel(ctx), w.creds.keyID)
	}
}

// claim takes the lock of an email address or login for the rest of this
// attempt. The first lock waits; a further one is only tried, so that two
// attempts never wait on each other (false: someone else holds it).
func (w *work) claim(key string) bool {
	if _, ok := w.held[key]; ok {
		return true
	}
	if w.held == nil {
		w.held = map[string]func(){}
	}
	if len(w.held) == 0 {
		w.held[key] = w.p.locks.lock(key)
		return true
	}
	unlock, ok := w.p.locks.tryLock(key)
	if ok {
		w.held[key] = unlock
	}
	return ok
}

func (w *work) unclaim(key string) {
	if unlock, ok := w.held[key]; ok {
		unlock()
		delete(w.held, key)
	}
}

func (w *work) releaseClaims() {
	for k, unlock := range w.held {
		unlock()
		delete(w.held, k)
	}
}

func (w *work) once(ctx context.Context) (Outcome, bool, error) {
	defer w.releaseClaims()
	w.owner = nil
	s, err := w.p.load(ctx, w.id)
	if err != nil {
		return Outcome{}, false, err
	}
	if len(s.Pending) == 0 {
		return Outcome{}, false, nil
	}
	pw := s.Pending[0]
	w.wh = pw.WebhookID
	if pw.NextAttemptAt.After(w.p.Now()) {
		return Outcome{WebhookID: pw.WebhookID, ContactID: w.id, Status: StatusRetrying, HTTPStatus: 202,
			Message: "queued: waiting for the next attempt", RetryAt: pw.NextAttemptAt}, true, nil
	}
	req, err := ParseRequest(pw.WebhookReceived)
	if err != nil {
		return w.finish(ctx, s, pw, nil, WebhookFailed{WebhookID: pw.WebhookID, Action: pw.Action, Reason: err.Error(), Status: 400})
	}
	var events []Event
	var outcome Event
	switch req.Action {
	case ActionAdd:
		events, outcome, err = w.add(ctx, s, pw, req)
	default:
		events, outcome, err = w.update(ctx, s, pw, req)
	}
	if err != nil {
		if errors.Is(err, errConflict) {
			return Outcome{}, false, err
		}
		if Temporary(err) {
			return w.retry(ctx, s, pw, err)
		}
		var crm *crmError
		if errors.As(err, &crm) {
			return w.finish(ctx, s, pw, nil, WebhookFailed{WebhookID: pw.WebhookID, Action: req.Action, Reason: crm.Error(), Status: crm.status})
		}
		return Outcome{}, false, err
	}
	return w.finish(ctx, s, pw, events, outcome)
}

// ownerRead is a stream version a decision depended on.
type ownerRead struct {
	contact ContactID
	version uint64
}

// crmError is a permanent CRM failure or a request the CRM data refutes:
// the webhook fails with status.
type crmError struct {
	status int
	msg    string
}

func (e *crmError) Error() string { return e.msg }

func failCRM(prefix string, err error) error {
	if Temporary(err) {
		return err
	}
	return &crmError{status: 502, msg: prefix + ": " + err.Error()}
}

// contactFromCRM reads the contact once per ProcessNext.
func (w *work) contactFromCRM(ctx context.Context) (CRMContact, error) {
	if w.contact != nil || w.contactErr != nil {
		if w.contactErr != nil {
			return CRMContact{}, w.contactErr
		}
		return *w.contact, nil
	}
	c, err := w.p.CRM.Contact(ctx, w.id)
	switch {
	case err != nil:
		w.contactErr = failCRM("read contact from FunnelKit", err)
		return CRMContact{}, w.contactErr
	case c.ID != w.id:
		w.contactErr = &crmError{status: 502, msg: fmt.Sprintf("FunnelKit answered contact %d for contact %d", c.ID, w.id)}
		return CRMContact{}, w.contactErr
	}
	w.contact = &c
	return c, nil
}

// tagsFor is the tag set an update applies: the request's tags param
// resolved against the catalogue, else the contact's tags from the CRM.
func (w *work) tagsFor(ctx context.Context, req Request) ([]Tag, error) {
	if !req.HasTags {
		c, err := w.contactFromCRM(ctx)
		return c.Tags, err
	}
	if w.catalog == nil {
		cat, err := w.p.CRM.Tags(ctx)
		if err != nil {
			return nil, failCRM("read tag catalogue from FunnelKit", err)
		}
		w.catalog = cat
	}
	return ResolveTags(req.Tags, w.catalog)
}

// ResolveTags turns the entries of a tags param (ids, or names that match a
// catalogue tag exactly) into tags. An entry that matches nothing is an
// error naming it.
func ResolveTags(entries []string, catalog []Tag) ([]Tag, error) {
	var out []Tag
	for _, e := range entries {
		if n, err := strconv.ParseUint(e, 10, 64); err == nil {
			i := indexTag(catalog, func(t Tag) bool { return t.ID == n })
			if i < 0 {
				return nil, &crmError{status: 400, msg: fmt.Sprintf("tags: no FunnelKit tag has id %d", n)}
			}
			out = append(out, catalog[i])
			continue
		}
		i := indexTag(catalog, func(t Tag) bool { return t.Name == e })
		if i < 0 {
			return nil, &crmError{status: 400, msg: fmt.Sprintf("tags: no FunnelKit tag is named %q (use tag ids or exact names)", truncate(e, 60))}
		}
		out = append(out, catalog[i])
	}
	return out, nil
}

func indexTag(tags []Tag, f func(Tag) bool) int {
	for i, t := range tags {
		if f(t) {
			return i
		}
	}
	return -1
}

// update handles update and update_tags, and add for a contact that
// already has a user.
func (w *work) update(ctx context.Context, s *ContactState, pw PendingWebhook, req Request) ([]Event, Event, error) {
	u := s.User
	var events []Event
	if u == nil && req.Email != "" {
		w.claim("email:" + EmailKey(req.Email))
		owner, version, err := w.p.emailOwner(ctx, req.Email)
		if err != nil {
			return nil, nil, err
		}
		if owner != nil && owner.ContactID != w.id {
			// The link copies the owner as read: it must still be so when
			// the link is recorded (finish checks).
			w.owner = &ownerRead{contact: owner.ContactID, version: version}
			c, err := w.contactFromCRM(ctx)
			if err != nil {
				return nil, nil, err
			}
			linked, _ := DecideLink(owner, c)
			events = append(events, linked)
			u = EvolveUser(nil, w.id, Envelope{Event: linked, OccurredAt: w.p.Now()})
		}
	}
	if u == nil {
		return nil, WebhookIgnored{WebhookID: pw.WebhookID, Action: req.Action, Reason: "No matching user found"}, nil
	}
	tags, err := w.tagsFor(ctx, req)
	if err != nil {
		return nil, nil, err
	}
	var notes []string
	events = append(events, DecideTags(u, tags)...)
	if req.Action != ActionUpdateTags {
		c, err := w.contactFromCRM(ctx)
		if err != nil {
			return nil, nil, err
		}
		events = append(events, w.p.Policy.UpdateMeta(u, c)...)
		emailEvents, note, err := w.changeEmail(ctx, u, c.Email)
		if err != nil {
			return nil, nil, err
		}
		events = append(events, emailEvents...)
		notes = appendNote(notes, note)
		roleEvents, note := DecideRole(w.p.Policy, u, req.Role)
		events = append(events, roleEvents...)
		notes = appendNote(notes, note)
	}
	msg := "No changes"
	if len(events) > 0 {
		msg = "User updated"
		if _, ok := events[0].(UserLinked); ok {
			msg = "Linked the existing user with this email"
		}
	}
	return events, processed(pw, req, u.UserID, msg, events, notes), nil
}

// changeEmail reserves a changed address for the user before it is recorded.
func (w *work) changeEmail(ctx context.Context, u *User, email string) ([]Event, string, error) {
	email = NormalizeEmail(email)
	if email == "" || EmailKey(email) == EmailKey(u.Email) || !ValidEmail(email) {
		events, note := DecideEmail(u, email, true)
		return events, note, nil
	}
	if !w.claim("email:" + EmailKey(email)) {
		return nil, "email not changed: " + email + " is being claimed by another webhook; send update again", nil
	}
	owner, _, err := w.p.reserve(ctx, EmailStream(email), w.wh, EmailReserved{Email: email, ContactID: w.id, UserID: u.UserID}, ownsEmail(email))
	if err != nil {
		return nil, "", err
	}
	events, note := DecideEmail(u, email, owner == w.id)
	return events, note, nil
}

func (w *work) add(ctx context.Context, s *ContactState, pw PendingWebhook, req Request) ([]Event, Event, error) {
	c, err := w.contactFromCRM(ctx)
	if err != nil {
		return nil, nil, err
	}
	var owner *User
	if s.User == nil && c.Email != "" {
		w.claim("email:" + EmailKey(c.Email))
		if owner, _, err = w.p.emailOwner(ctx, c.Email); err != nil {
			return nil, nil, err
		}
	}
	plan, err := PlanAdd(s, c, owner)
	if err != nil {
		return nil, nil, &crmError{status: 500, msg: "Import user failed: " + err.Error()}
	}
	switch plan {
	case AddAsUpdate:
		return w.update(ctx, s, pw, req)
	case AddLink:
		req.Email = c.Email
		return w.update(ctx, s, pw, req)
	}
	// Create: claim the address first; if another contact won it meanwhile,
	// decide again (it will link).
	userID := w.p.NewID()
	holder, _, err := w.p.reserve(ctx, EmailStream(c.Email), pw.WebhookID,
		EmailReserved{Email: NormalizeEmail(c.Email), ContactID: w.id, UserID: userID}, ownsEmail(c.Email))
	if err != nil {
		return nil, nil, err
	}
	if holder != w.id {
		return nil, nil, errConflict
	}
	login, err := w.claimLogin(ctx, pw.WebhookID, w.p.Policy.LoginFor(c), w.id, userID)
	if err != nil {
		return nil, nil, err
	}
	creds, err := w.credentials(ctx, c, pw)
	if err != nil {
		return nil, nil, err
	}
	n := NewUser{UserID: userID, Login: login, PasswordHash: creds.hash, RequestedRole: req.Role, WelcomeEmail: req.SendNotification}
	if creds.keyID != "" {
		n.Issued = &PasswordIssued{KeyID: creds.keyID, Sealed: creds.sealed, Field: w.p.Policy.PasswordField}
	}
	events, note := DecideCreate(w.p.Policy, c, n)
	return events, processed(pw, req, userID, "User created", events, appendNote(nil, note)), nil
}

// credentials makes the new user's password once per ProcessNext: the
// mapped password field, or a generated one sealed for return to the CRM.
func (w *work) credentials(ctx context.Context, c CRMContact, pw PendingWebhook) (*credentials, error) {
	if w.creds != nil {
		return w.creds, nil
	}
	password, fromCRM := w.p.Policy.PasswordFrom(c)
	if !fromCRM {
		var err error
		if password, err = w.p.Secrets.NewPassword(); err != nil {
			return nil, fmt.Errorf("generate password: %w", err)
		}
	}
	hash, err := w.p.Secrets.Hash(password)
	if err != nil {
		return nil, fmt.Errorf("hash password: %w", err)
	}
	creds := &credentials{hash: hash}
	if !fromCRM && w.p.Policy.PasswordField != "" {
		creds.keyID = "pw-" + w.id.String() + "-" + w.p.NewID()
		if creds.sealed, err = w.p.Secrets.Seal(ctx, creds.keyID, password); err != nil {
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

func processed(pw PendingWebhook, req Request, userID, msg string, events []Event, notes []string) WebhookProcessed {
	changed := make([]string, 0, len(events))
	for _, e := range events {
		changed = append(changed, e.EventType())
	}
	if len(notes) > 0 {
		msg += " (" + strings.Join(notes, "; ") + ")"
	}
	return WebhookProcessed{WebhookID: pw.WebhookID, Action: req.Action, Message: msg, UserID: userID, Changed: changed}
}

// finish appends the events and the outcome to the contact's stream at the
// version it was read at, then settles the email reservation.
func (w *work) finish(ctx context.Context, s *ContactState, pw PendingWebhook, events []Event, outcome Event) (Outcome, bool, error) {
	now := w.p.Now()
	envs := make([]Envelope, 0, len(events)+1)
	for _, e := range events {
		envs = append(envs, Envelope{Event: e, OccurredAt: now, WebhookID: pw.WebhookID})
	}
	// Apply the decision to a copy of the state to see the user after it.
	after := *s
	after.Webhooks = map[string]bool{}
	if s.User != nil {
		u := *s.User
		u.Meta = cloneMeta(s.User.Meta)
		after.User = &u
	}
	for _, e := range envs {
		after.Apply(e)
	}
	version := s.Version
	if after.User != nil {
		// Reservations change only under their claim locks, and only from
		// a current state: a stale one could move the user back.
		if !w.claim("email:"+EmailKey(after.User.Email)) || !w.claim("login:"+strings.ToLower(after.User.Login)) {
			return Outcome{}, false, errConflict
		}
		if s.User != nil && EmailKey(s.User.Email) != EmailKey(after.User.Email) && !w.claim("email:"+EmailKey(s.User.Email)) {
			return Outcome{}, false, errConflict // the address given up is being claimed
		}
		if o := w.owner; o != nil {
			// The user a link copies must not have changed since it was read.
			if _, err := w.p.Store.Append(ctx, o.contact.Stream(), ExactVersion(o.version)); err != nil {
				if errors.Is(err, ErrConcurrency) {
					return Outcome{}, false, errConflict
				}
				return Outcome{}, false, fmt.Errorf("check %s: %w", o.contact.Stream(), err)
			}
		}
		settled, err := w.p.settled(ctx, w.id, after.User)
		if err != nil {
			return Outcome{}, false, err
		}
		if !settled {
			// The user's address or login is reserved for another contact
			// (the user moved here). Record the user first, under this
			// stream's version, then move the reservations, then the
			// outcome: a crash or a conflict in between leaves the webhook
			// open, and its next attempt finds the user here and finishes
			// the move (settle is idempotent).
			if len(envs) == 0 {
				// Nothing to record first: check the state is still current.
				if _, err := w.p.Store.Append(ctx, w.id.Stream(), ExactVersion(version)); err != nil {
					if errors.Is(err, ErrConcurrency) {
						return Outcome{}, false, errConflict
					}
					return Outcome{}, false, fmt.Errorf("check %s: %w", w.id.Stream(), err)
				}
			}
			if len(envs) > 0 {
				raw, err := EncodeAll(envs)
				if err != nil {
					return Outcome{}, false, err
				}
				if _, err := w.p.Store.Append(ctx, w.id.Stream(), ExactVersion(version), raw...); err != nil {
					if errors.Is(err, ErrConcurrency) {
						return Outcome{}, false, errConflict
					}
					return Outcome{}, false, fmt.Errorf("record webhook %s: %w", pw.WebhookID, err)
				}
				w.used = true
				version += uint64(len(envs))
				envs = nil
			}
			if err := w.p.settle(ctx, pw.WebhookID, w.id, after.User); err != nil {
				return Outcome{}, false, err
			}
		}
	}
	envs = append(envs, Envelope{Event: outcome, OccurredAt: now, WebhookID: pw.WebhookID})
	raw, err := EncodeAll(envs)
	if err != nil {
		return Outcome{}, false, err
	}
	res, err := w.p.Store.Append(ctx, w.id.Stream(), ExactVersion(version), raw...)
	if errors.Is(err, ErrConcurrency) {
		return Outcome{}, false, errConflict
	}
	if err != nil {
		return Outcome{}, false, fmt.Errorf("record outcome of webhook %s: %w", pw.WebhookID, err)
	}
	w.used = true
	if s.User != nil && after.User != nil && EmailKey(s.User.Email) != EmailKey(after.User.Email) {
		w.p.release(ctx, pw.WebhookID, w.id, s.User.Email)
	}
	out := Outcome{WebhookID: pw.WebhookID, ContactID: w.id, Position: res.Position}
	switch o := outcome.(type) {
	case WebhookProcessed:
		out.Status, out.HTTPStatus, out.Message, out.UserID = StatusProcessed, 200, o.Message, o.UserID
	case WebhookIgnored:
		out.Status, out.HTTPStatus, out.Message = StatusIgnored, 200, o.Reason
	case WebhookFailed:
		out.Status, out.HTTPStatus, out.Message = StatusFailed, o.Status, o.Reason
	}
	return out, true, nil
}

func cloneMeta(m map[string]string) map[string]string {
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// retry records a transient failure; the webhook stays open.
func (w *work) retry(ctx context.Context, s *ContactState, pw PendingWebhook, cause error) (Outcome, bool, error) {
	attempt := pw.Attempts + 1
	next := w.p.Now().Add(w.p.Retry.Delay(attempt))
	raw, err := Encode(Envelope{Event: WebhookRetrying{WebhookID: pw.WebhookID, Attempt: attempt, Error: cause.Error(), NextAttemptAt: next},
		OccurredAt: w.p.Now(), WebhookID: pw.WebhookID})
	if err != nil {
		return Outcome{}, false, err
	}
	res, err := w.p.Store.Append(ctx, w.id.Stream(), ExactVersion(s.Version), raw)
	if errors.Is(err, ErrConcurrency) {
		return Outcome{}, false, errConflict
	}
	if err != nil {
		return Outcome{}, false, fmt.Errorf("record retry of webhook %s: %w", pw.WebhookID, err)
	}
	return Outcome{WebhookID: pw.WebhookID, ContactID: w.id, Status: StatusRetrying, HTTPStatus: 202,
		Message: "FunnelKit is unavailable; the webhook is queued and retried: " + cause.Error(), Position: res.Position, RetryAt: next}, true, nil
}

func (p *Processor) load(ctx context.Context, id ContactID) (*ContactState, error) {
	recs, err := p.Store.ReadStream(ctx, id.Stream())
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", id.Stream(), err)
	}
	return LoadContact(id, recs)
}

// reservation is the holder of a reservation stream.
type reservation struct {
	contact ContactID
	userID  string
	// wh is the webhook whose processing wrote the reservation.
	wh      string
	version uint64
}

func (p *Processor) readReservation(ctx context.Context, stream string) (reservation, error) {
	recs, err := p.Store.ReadStream(ctx, stream)
	if err != nil {
		return reservation{}, fmt.Errorf("read %s: %w", stream, err)
	}
	var r reservation
	for _, rec := range recs {
		env, err := Decode(rec)
		if err != nil {
			return reservation{}, err
		}
		switch e := env.Event.(type) {
		case EmailReserved:
			r.contact, r.userID, r.wh = e.ContactID, e.UserID, env.WebhookID
		case LoginReserved:
			r.contact, r.userID, r.wh = e.ContactID, e.UserID, env.WebhookID
		case EmailReleased:
			if e.ContactID == r.contact {
				r.contact, r.userID, r.wh = 0, "", ""
			}
		}
		r.version = rec.Version
	}
	return r, nil
}

// reserve claims a reservation stream for ev's contact unless another
// contact's user still holds it (owns says whether a user still owns what
// the stream reserves); it returns the holder after the attempt.
func (p *Processor) reserve(ctx context.Context, stream, wh string, ev Event, owns func(*User) bool) (ContactID, string, error) {
	var contact ContactID
	var userID string
	switch e := ev.(type) {
	case EmailReserved:
		contact, userID = e.ContactID, e.UserID
	case LoginReserved:
		contact, userID = e.ContactID, e.UserID
	}
	for range maxConflicts {
		r, err := p.readReservation(ctx, stream)
		if err != nil {
			return 0, "", err
		}
		if r.contact != 0 && (r.contact != contact || r.userID == userID) {
			if r.contact != contact {
				// The holder may be a contact whose user is gone: then the
				// address is free.
				holder, err := p.load(ctx, r.contact)
				if err != nil {
					return 0, "", err
				}
				if holder.User != nil && holder.User.UserID == r.userID && owns(holder.User) {
					return r.contact, r.userID, nil
				}
				if holder.User == nil && holder.Open(r.wh) {
					// A claim still being processed (or to be resumed
					// after a crash): not free.
					return r.contact, r.userID, nil
				}
			} else {
				return r.contact, r.userID, nil
			}
		}
		raw, err := Encode(Envelope{Event: ev, OccurredAt: p.Now(), WebhookID: wh})
		if err != nil {
			return 0, "", err
		}
		_, err = p.Store.Append(ctx, stream, ExactVersion(r.version), raw)
		if errors.Is(err, ErrConcurrency) {
			continue
		}
		if err != nil {
			return 0, "", fmt.Errorf("reserve %s: %w", stream, err)
		}
		return contact, userID, nil
	}
	return 0, "", fmt.Errorf("reserve %s: too many concurrent claims", stream)
}

// emailOwner is the user holding an address, nil if none.
func (p *Processor) emailOwner(ctx context.Context, email string) (*User, uint64, error) {
	r, err := p.readReservation(ctx, EmailStream(email))
	if err != nil || r.contact == 0 {
		return nil, 0, err
	}
	s, err := p.load(ctx, r.contact)
	if err != nil {
		return nil, 0, err
	}
	if s.User == nil || s.User.UserID != r.userID || EmailKey(s.User.Email) != EmailKey(email) {
		return nil, 0, nil
	}
	return s.User, s.Version, nil
}

// ownsEmail says whether a user still has the address.
func ownsEmail(email string) func(*User) bool {
	return func(u *User) bool { return EmailKey(u.Email) == EmailKey(email) }
}

// ownsLogin: a login never changes once given; it moves with its user
// (settle).
func ownsLogin(*User) bool { return true }

// claimLogin reserves login, or login2, login3… on a clash.
func (w *work) claimLogin(ctx context.Context, wh, login string, id ContactID, userID string) (string, error) {
	p := w.p
	for i := 1; i <= 100; i++ {
		try := login
		if i > 1 {
			try = login + strconv.Itoa(i)
		}
		if !w.claim("login:" + strings.ToLower(try)) {
			continue // another webhook is claiming it right now
		}
		holder, _, err := p.reserve(ctx, LoginStream(try), wh, LoginReserved{Login: try, ContactID: id, UserID: userID}, ownsLogin)
		if err != nil {
			return "", err
		}
		if holder == id {
			return try, nil
		}
		w.unclaim("login:" + strings.ToLower(try))
	}
	return "", &crmError{status: 500, msg: fmt.Sprintf("Import user failed: logins %s to %s100 are all taken", login, login)}
}

// settled reports whether the user's email and login reservations already
// point at contact id.
func (p *Processor) settled(ctx context.Context, id ContactID, u *User) (bool, error) {
	for _, stream := range []string{EmailStream(u.Email), LoginStream(u.Login)} {
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

// settle makes the user's email and login reservations point at contact id:
// a user that moved here (UserLinked) takes them along, and the contact it
// left loses the user. It is idempotent, so the next attempt of a webhook
// whose move a crash interrupted finishes it.
func (p *Processor) settle(ctx context.Context, wh string, id ContactID, u *User) error {
	if err := p.settleStream(ctx, wh, id, u, EmailStream(u.Email), EmailReserved{Email: u.Email, ContactID: id, UserID: u.UserID}); err != nil {
		return err
	}
	return p.settleStream(ctx, wh, id, u, LoginStream(u.Login), LoginReserved{Login: u.Login, ContactID: id, UserID: u.UserID})
}

func (p *Processor) settleStream(ctx context.Context, wh string, id ContactID, u *User, stream string, claim Event) error {
	for range maxConflicts {
		r, err := p.readReservation(ctx, stream)
		if err != nil {
			return err
		}
		if r.contact == id && r.userID == u.UserID {
			return nil
		}
		if r.contact != 0 && r.contact != id {
			old, err := p.load(ctx, r.contact)
			if err != nil {
				return err
			}
			switch {
			case old.User != nil && old.User.UserID != u.UserID:
				return nil // another user holds it; nothing to settle
			case old.User == nil && old.Open(r.wh):
				return errConflict // another contact is claiming it right now
			case old.User != nil:
				raw, err := Encode(Envelope{Event: UserUnlinked{UserID: u.UserID, ToContactID: id}, OccurredAt: p.Now(), WebhookID: wh})
				if err != nil {
					return err
				}
				if _, err := p.Store.Append(ctx, r.contact.Stream(), ExactVersion(old.Version), raw); err != nil {
					if errors.Is(err, ErrConcurrency) {
						continue
					}
					return fmt.Errorf("unlink user from %s: %w", r.contact.Stream(), err)
				}
			}
		}
		raw, err := Encode(Envelope{Event: claim, OccurredAt: p.Now(), WebhookID: wh})
		if err != nil {
			return err
		}
		if _, err := p.Store.Append(ctx, stream, ExactVersion(r.version), raw); err != nil {
			if errors.Is(err, ErrConcurrency) {
				continue
			}
			return fmt.Errorf("reserve %s: %w", stream, err)
		}
		return nil
	}
	return fmt.Errorf("settle %s: too many concurrent changes", stream)
}

// release frees an address the contact's user no longer has. It is
// bookkeeping only: a reservation whose holder no longer has the address is
// free anyway, so a failure here changes nothing.
func (p *Processor) release(ctx context.Context, wh string, id ContactID, email string) {
	r, err := p.readReservation(ctx, EmailStream(email))
	if err != nil || r.contact != id {
		return
	}
	raw, err := Encode(Envelope{Event: EmailReleased{Email: NormalizeEmail(email), ContactID: id}, OccurredAt: p.Now(), WebhookID: wh})
	if err != nil {
		return
	}
	_, _ = p.Store.Append(ctx, EmailStream(email), ExactVersion(r.version), raw)
}
