package command

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"time"

	"github.com/usersync/usersync/domain"
)

// ProcessWebhook is the use case that turns a recorded webhook into a
// user: it loads the contact, reads the contact from the CRM, lets the
// domain decide, and appends the events and the webhook's outcome at the
// version it loaded. It is safe for concurrent use; callers process one
// contact at a time in order (the expected versions keep the streams
// consistent either way).
type ProcessWebhook struct {
	policy    domain.Policy
	store     domain.EventStore
	contacts  *Contacts
	crm       domain.CRM
	secrets   domain.Secrets
	newID     func() string
	now       func() time.Time
	retry     domain.Backoff
	rand      func() float64
	conflicts conflicts
	locks     keyLocks
	// raceLost and crmWasted are the metrics hooks (never nil).
	raceLost  func(useCase string)
	crmWasted func(reason string)
}

// ProcessWebhookConfig configures NewProcessWebhook.
type ProcessWebhookConfig struct {
	Policy  domain.Policy
	Store   domain.EventStore
	CRM     domain.CRM
	Secrets domain.Secrets
	// NewID makes user ids and password key ids (required).
	NewID func() string
	// Now is the clock (default time.Now).
	Now func() time.Time
	// Retry is the schedule of a webhook waiting for the CRM (default
	// 500 ms doubling up to 5 minutes, as --retry-initial/--retry-max).
	Retry domain.Backoff
	// CRMConcurrency is the most CRM reads in flight at once, over all
	// contacts (default DefaultCRMConcurrency).
	CRMConcurrency int
	// ContactCache is how many contacts' decided states are kept, so that
	// a webhook reads only the events after its contact's cached state
	// (default DefaultContactCache).
	ContactCache int
	// Rand draws the jitter of each retry (domain.Backoff.Jittered), a
	// number in [0, 1) (default math/rand/v2's Float64). A constant makes
	// the schedule exact, as tests want.
	Rand func() float64
	// OnRaceLost, if set, is told of each append that lost to another
	// writer: use case "webhook" (the contact's stream moved on) or
	// "claim" (an email or login reservation, or the user a link copies,
	// changed meanwhile). A metrics hook; it must not block.
	OnRaceLost func(useCase string)
	// OnCRMReadWasted, if set, is told of each FunnelKit contact read that
	// no recorded decision used because the decision lost a race, with
	// what followed: "read_again" (the webhook left to decide was recorded
	// after the read), "unused" (another writer closed what it was read
	// for) or "gave_up" (MaxRedecisions reached). A metrics hook.
	OnCRMReadWasted func(reason string)
}

func (c *ProcessWebhookConfig) setDefaults() {
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Rand == nil {
		c.Rand = rand.Float64
	}
	if c.CRMConcurrency == 0 {
		c.CRMConcurrency = DefaultCRMConcurrency
	}
	if c.ContactCache == 0 {
		c.ContactCache = DefaultContactCache
	}
	if c.Retry == (domain.Backoff{}) {
		c.Retry = domain.Backoff{Initial: 500 * time.Millisecond, Max: 5 * time.Minute}
	}
	if c.OnRaceLost == nil {
		c.OnRaceLost = func(string) {}
	}
	if c.OnCRMReadWasted == nil {
		c.OnCRMReadWasted = func(string) {}
	}
}

// Validate says what is missing or wrong.
func (c ProcessWebhookConfig) Validate() error {
	var errs []error
	if c.Store == nil {
		errs = append(errs, errors.New("no event store"))
	}
	if c.CRM == nil {
		errs = append(errs, errors.New("no CRM"))
	}
	if c.Secrets == nil {
		errs = append(errs, errors.New("no secrets"))
	}
	if c.NewID == nil {
		errs = append(errs, errors.New("no id generator (NewID)"))
	}
	if err := c.Retry.Validate(); err != nil {
		errs = append(errs, fmt.Errorf("retry %w", err))
	}
	if c.CRMConcurrency < 1 {
		errs = append(errs, fmt.Errorf("CRM concurrency %d must be at least 1", c.CRMConcurrency))
	}
	if c.ContactCache < 1 {
		errs = append(errs, fmt.Errorf("contact cache %d must be at least 1 contact", c.ContactCache))
	}
	if err := c.Policy.Validate(); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("process webhooks: %w", err)
	}
	return nil
}

// NewProcessWebhook checks cfg and makes the use case.
func NewProcessWebhook(cfg ProcessWebhookConfig) (*ProcessWebhook, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	p := &ProcessWebhook{
		policy: cfg.Policy, store: cfg.Store, contacts: NewContacts(cfg.Store, cfg.ContactCache), crm: limitCRM(cfg.CRM, cfg.CRMConcurrency), secrets: cfg.Secrets,
		newID: cfg.NewID, now: cfg.Now, retry: cfg.Retry, rand: cfg.Rand, conflicts: defaultConflicts(),
		raceLost: cfg.OnRaceLost, crmWasted: cfg.OnCRMReadWasted,
	}
	p.conflicts.lost = func(error) { p.raceLost("claim") }
	return p, nil
}

// Next processes the oldest open webhook of a contact. ok is false when
// the contact has none. A store error is returned as err; the webhook
// stays open and the caller tries again later.
func (p *ProcessWebhook) Next(ctx context.Context, id domain.ContactID) (out Outcome, ok bool, err error) {
	outs, err := p.NextBatch(ctx, id, 1)
	if err != nil || len(outs) == 0 {
		return Outcome{}, false, err
	}
	return outs[0], true, nil
}

// MaxBatch is the most webhooks of one contact NextBatch decides together.
const MaxBatch = 64

// NextBatch processes the oldest open webhooks of a contact, up to limit
// of them (MaxBatch when 0 or less): the oldest as Next does, and the ones
// queued after it that a decision on the same FunnelKit answer settles
// without touching another stream (coalesce.go), all appended at once.
// Each keeps its own outcome event; outs has their outcomes in order
// (empty when none is open). A store error is returned as err; the
// webhooks stay open and the caller tries again later.
func (p *ProcessWebhook) NextBatch(ctx context.Context, id domain.ContactID, limit int) (outs []Outcome, err error) {
	if limit <= 0 {
		limit = MaxBatch
	}
	w := &work{p: p, id: id}
	defer w.cleanup(ctx)
	defer w.releaseClaims()
	cf := p.contacts.conflicts
	cf.lost = w.lostRace
	res, err := p.contacts.updateWith(ctx, id, cf, func(s *domain.ContactState) ([]domain.Envelope, error) {
		w.releaseClaims()
		if err := w.again(s); err != nil {
			return nil, err
		}
		envs, o, err := w.decideBatch(ctx, s, limit)
		if err != nil {
			// Let the others have what this attempt holds while it waits.
			w.releaseClaims()
		}
		outs = o
		return envs, err
	})
	w.countWasted(res.Position != 0, err)
	if err != nil {
		return nil, fmt.Errorf("process contact %d: %w", id, err)
	}
	if res.Position != 0 {
		w.used = true
		for i := range outs {
			// The position of the batch's last event: each outcome is
			// visible to a view that reached it.
			outs[i].Position = res.Position
		}
		if w.releaseEmail != "" {
			p.release(ctx, outs[0].WebhookID, id, w.releaseEmail)
		}
	}
	return outs, nil
}

// work is one Next call: what it read from the CRM and the password it
// made survive a conflict and a new decision.
type work struct {
	p       *ProcessWebhook
	id      domain.ContactID
	wh      string
	contact *domain.CRMContact
	// contactErr is the CRM's failure, kept like its answer: a decision
	// made again after a conflict sees the same CRM answer.
	contactErr error
	// covers are the webhooks open when the contact was read: the read is
	// what deciding them right then would have seen. A webhook recorded
	// after it (found open after a lost race) needs a read of its own.
	covers map[string]bool
	// pending are the open webhooks of the state being decided.
	pending []domain.PendingWebhook
	// readUsed: the current attempt used the read (contact or contactErr).
	readUsed bool
	// lost is the last race lost (nil: none yet); redecided counts the
	// attempts MaxRedecisions bounds; first is what the last attempt
	// decided on (see again).
	lost      error
	redecided int
	first     decidedOn
	catalog   []domain.Tag
	// held are the claim locks this attempt holds (see keyLocks).
	held map[string]func()
	// owner is the other contact a link copies its user from, as read.
	owner *ownerRead
	creds *credentials
	used  bool
	// releaseEmail is the address the user gave up, freed once the
	// outcome is recorded.
	releaseEmail string
	// decidedAt is the version of the contact's state the current
	// decision started from (reserve checks it).
	decidedAt uint64
}

// ownerRead is a stream version a decision depended on.
type ownerRead struct {
	contact domain.ContactID
	version uint64
}

type credentials struct {
	hash   string
	keyID  string
	sealed []byte
}

// cleanup shreds a password key that was made but never recorded.
func (w *work) cleanup(ctx context.Context) {
	if w.creds != nil && w.creds.keyID != "" && !w.used {
		_ = w.p.secrets.Shred(context.WithoutCancel(ctx), w.creds.keyID)
	}
}

// decide is one attempt: the events to append for the oldest open webhook
// (its outcome last) and the outcome to report.
func (w *work) decide(ctx context.Context, s *domain.ContactState) ([]domain.Envelope, Outcome, error) {
	w.owner, w.releaseEmail, w.decidedAt = nil, "", s.Version
	w.pending, w.readUsed = s.Pending, false
	if len(s.Pending) == 0 {
		return nil, Outcome{}, nil
	}
	pw := s.Pending[0]
	w.first = decidedOnOf(s)
	w.wh = pw.WebhookID
	if pw.NextAttemptAt.After(w.p.now()) {
		return nil, Outcome{WebhookID: pw.WebhookID, ContactID: w.id, Status: StatusRetrying,
			Message: "queued: waiting for the next attempt", RetryAt: pw.NextAttemptAt}, nil
	}
	req, err := domain.ParseRequest(pw.WebhookReceived)
	if err != nil {
		return w.fail(ctx, s, pw, pw.Action, domain.Fail(domain.ErrInvalidRequest, err.Error()))
	}
	var events []domain.Event
	var outcome domain.Event
	switch req.Action {
	case domain.ActionAdd:
		events, outcome, err = w.add(ctx, s, pw, req)
	default:
		events, outcome, err = w.update(ctx, s, pw, req)
	}
	var failure *domain.Failure
	switch {
	case err == nil:
		return w.finish(ctx, s, pw, events, outcome, nil)
	case conflict(err):
		return nil, Outcome{}, err
	case domain.Temporary(err):
		return w.retry(s, pw, err)
	case errors.As(err, &failure):
		return w.fail(ctx, s, pw, req.Action, failure)
	}
	return nil, Outcome{}, err
}

// fail records that the webhook failed for good.
func (w *work) fail(ctx context.Context, s *domain.ContactState, pw domain.PendingWebhook, action string, cause error) ([]domain.Envelope, Outcome, error) {
	return w.finish(ctx, s, pw, nil, domain.WebhookFailed{WebhookID: pw.WebhookID, Action: action, Reason: cause.Error(), Status: recordedStatus(cause)}, cause)
}

// failCRM is a CRM error as the webhook sees it: a temporary one stays as
// it is (the webhook is retried), any other fails it.
func failCRM(prefix string, err error) error {
	if domain.Temporary(err) {
		return err
	}
	return domain.Fail(domain.ErrCRMRefused, prefix+": "+err.Error())
}

// contactFromCRM reads the contact once per Next, and again only for a
// webhook the read does not cover (see work.covers).
func (w *work) contactFromCRM(ctx context.Context) (domain.CRMContact, error) {
	if w.hasRead() && !w.covers[w.wh] {
		w.p.crmWasted("read_again")
		w.contact, w.contactErr = nil, nil
	}
	if w.hasRead() {
		w.readUsed = true
	} else {
		w.covers = make(map[string]bool, len(w.pending))
		for _, pw := range w.pending {
			w.covers[pw.WebhookID] = true
		}
	}
	if w.contactErr != nil {
		return domain.CRMContact{}, w.contactErr
	}
	if w.contact != nil {
		return *w.contact, nil
	}
	c, err := w.p.crm.Contact(ctx, w.id)
	w.readUsed = true
	switch {
	case err != nil:
		w.contactErr = failCRM("read contact from FunnelKit", err)
		return domain.CRMContact{}, w.contactErr
	case c.ID != w.id:
		w.contactErr = domain.Fail(domain.ErrCRMRefused, fmt.Sprintf("FunnelKit answered contact %d for contact %d", c.ID, w.id))
		return domain.CRMContact{}, w.contactErr
	}
	w.contact = &c
	return c, nil
}

// tagsFor is the tag set an update applies: the request's tags param
// resolved against the catalogue, else the contact's tags from the CRM.
func (w *work) tagsFor(ctx context.Context, req domain.Request) ([]domain.Tag, error) {
	if !req.HasTags {
		c, err := w.contactFromCRM(ctx)
		return c.Tags, err
	}
	if w.catalog == nil {
		cat, err := w.p.crm.Tags(ctx)
		if err != nil {
			return nil, failCRM("read tag catalogue from FunnelKit", err)
		}
		w.catalog = cat
	}
	return domain.ResolveTags(req.Tags, w.catalog)
}

func (p *ProcessWebhook) envelope(wh string, e domain.Event) domain.Envelope {
	return domain.Envelope{Event: e, OccurredAt: p.now(), WebhookID: wh}
}

// retry records a transient failure; the webhook stays open.
func (w *work) retry(s *domain.ContactState, pw domain.PendingWebhook, cause error) ([]domain.Envelope, Outcome, error) {
	attempt := pw.Attempts + 1
	next := w.p.now().Add(w.p.retry.Jittered(attempt, w.p.rand()))
	env := w.p.envelope(pw.WebhookID, domain.WebhookRetrying{WebhookID: pw.WebhookID, Attempt: attempt, Error: cause.Error(), NextAttemptAt: next})
	return []domain.Envelope{env}, Outcome{WebhookID: pw.WebhookID, ContactID: w.id, Status: StatusRetrying,
		Message: "FunnelKit is unavailable; the webhook is queued and retried: " + cause.Error(),
		Err:     fmt.Errorf("%w: %w", domain.ErrCRMUnavailable, cause), RetryAt: next}, nil
}

// cloneUser is a copy of u whose meta can be changed apart from u's.
func cloneUser(u *domain.User) *domain.User {
	c := *u
	c.Meta = maps.Clone(u.Meta)
	if c.Meta == nil {
		c.Meta = map[string]string{}
	}
	return &c
}
