package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"golang.org/x/crypto/bcrypt"

	"github.com/usersync/usersync/domain"
	"github.com/usersync/usersync/domain/command"
	"github.com/usersync/usersync/eventstore"
	"github.com/usersync/usersync/eventstore/keystore"
	"github.com/usersync/usersync/projections"
)

// seedConfig is every flag of the seed command.
type seedConfig struct {
	Data            string
	Users           int
	WebhooksPerUser int
	FirstContact    int
	Writers         int
	History         time.Duration
	HashCost        int
	Progress        string
}

// hashPool is how many distinct password hashes a seed computes (users
// share them in turn): a real bcrypt hash each, of a random password that
// is thrown away, so no password exists in the clear and nobody can log
// in with one.
const hashPool = 64

func parseSeed(args []string, stderr io.Writer) (*seedConfig, error) {
	c := &seedConfig{}
	fs := flag.NewFlagSet("seed", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&c.Data, "data", "", "data directory of the usersync to seed (its --data): a new one (no views.db, no events in events.db)")
	fs.IntVar(&c.Users, "users", 10000, "users to create, contacts --first-contact … --first-contact+N-1 (addresses cN@example.com, as the load tool's simulator has them)")
	fs.IntVar(&c.WebhooksPerUser, "webhooks-per-user", 5, "webhooks in each user's history: an add, then update_tags and update webhooks (one in four changes nothing)")
	fs.IntVar(&c.FirstContact, "first-contact", 1, "id of the first contact")
	fs.IntVar(&c.Writers, "writers", 128, "concurrent appenders (their appends share group commits)")
	fs.DurationVar(&c.History, "history", 7*24*time.Hour, "how far back the history starts (webhooks are spread from then to now)")
	fs.IntVar(&c.HashCost, "hash-cost", bcrypt.DefaultCost, "bcrypt cost of the users' password hashes (the server's is 10)")
	fs.StringVar(&c.Progress, "progress", "auto", "progress line on stderr: auto (when stderr is a terminal), on, off")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: usersync-load seed --data DIR [flags]\n\nWrites users and their webhook history into DIR/events.db, event for event as\nusersync serve would have appended them (receipts, users, tags, meta, outcomes,\nand the email and login reservations). Start usersync serve --data DIR after it.\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil, errHelp
		}
		return nil, errUsage
	}
	switch {
	case fs.NArg() > 0:
		return nil, fmt.Errorf("seed: unexpected argument %q (flags start with --)", fs.Arg(0))
	case c.Data == "":
		return nil, errors.New("seed: --data is required: the data directory usersync serve will use")
	case c.Users < 1 || c.WebhooksPerUser < 1 || c.FirstContact < 1:
		return nil, errors.New("seed: --users, --webhooks-per-user and --first-contact must be at least 1")
	case c.Writers < 1 || c.Writers > 4096:
		return nil, fmt.Errorf("seed: --writers %d: want 1 to 4096", c.Writers)
	case c.History <= 0:
		return nil, errors.New("seed: --history must be positive")
	case c.HashCost < bcrypt.MinCost || c.HashCost > bcrypt.MaxCost:
		return nil, fmt.Errorf("seed: --hash-cost %d: want %d to %d", c.HashCost, bcrypt.MinCost, bcrypt.MaxCost)
	case !slices.Contains([]string{"auto", "on", "off"}, c.Progress):
		return nil, fmt.Errorf("seed: --progress %q: want auto, on or off", c.Progress)
	}
	return c, nil
}

// seedCmd writes the users and their histories with many concurrent
// appenders and reports events/s.
func seedCmd(ctx context.Context, args []string, stdout, stderr io.Writer) (err error) {
	cfg, err := parseSeed(args, stderr)
	if err != nil {
		return err
	}
	hashes, err := passwordHashes(min(cfg.Users, hashPool), cfg.HashCost)
	if err != nil {
		return err
	}
	path, viewsPath := filepath.Join(cfg.Data, "events.db"), filepath.Join(cfg.Data, "views.db")
	if _, err := os.Stat(viewsPath); !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("seed: %s exists: seed a new data directory (the views of another store would not match the seeded one)", viewsPath)
	}
	store, err := eventstore.Open(ctx, path)
	if err != nil {
		return fmt.Errorf("seed: %w", err)
	}
	defer func() {
		if cerr := store.Close(); cerr != nil && err == nil {
			err = fmt.Errorf("seed: close %s: %w", path, cerr)
		}
	}()
	if head, err := store.Head(ctx); err != nil {
		return fmt.Errorf("seed: %w", err)
	} else if head > 0 {
		// The seed writes the embedded store, whose positions count its
		// events (1, 2, 3, …): the head is how many it holds.
		return fmt.Errorf("seed: %s already holds %d events: seed a new data directory (a seed only starts histories, it cannot add to them)", path, head)
	}
	s := &seeder{cfg: cfg, hashes: hashes, store: store, now: time.Now().UTC()}
	prog := &progress{out: stderr, on: progressOn(cfg.Progress, stderr), started: time.Now()}
	start := time.Now()
	stop := s.follow(prog)
	err = s.run(ctx)
	stop()
	appended := time.Since(start)
	if err != nil {
		return err
	}
	head, err := store.Head(ctx)
	if err != nil {
		return fmt.Errorf("seed: %w", err)
	}
	if err := store.Close(); err != nil {
		return fmt.Errorf("seed: close %s: %w", path, err)
	}
	if err := handledUpTo(ctx, viewsPath, head); err != nil {
		return err
	}
	total := time.Since(start)
	events := s.events.Load()
	fmt.Fprintf(stdout, "seeded %d users with %d webhooks each into %s: %d events (%d in contact streams, %d reservations) in %s: %.0f events/s (%.0f/s until the last append, before the store's final checkpoint)\n",
		cfg.Users, cfg.WebhooksPerUser, path, events, events-2*uint64(cfg.Users), 2*cfg.Users,
		total.Round(time.Millisecond), float64(events)/total.Seconds(), float64(events)/appended.Seconds())
	return nil
}

// handledUpTo marks the process managers (welcome email, password
// return) as having handled the log up to head, as on the server that
// would have processed the seeded webhooks: they had nothing to do for
// them, and a server started on the store must not spend its first
// minutes finding that out again. The views themselves are left to
// usersync rebuild or the server's start.
func handledUpTo(ctx context.Context, viewsPath string, head uint64) error {
	views, err := projections.Open(ctx, viewsPath)
	if err != nil {
		return fmt.Errorf("seed: %w", err)
	}
	for _, name := range command.ProcessNames() {
		if err := views.SaveCheckpoint(ctx, name, head); err != nil {
			views.Close()
			return fmt.Errorf("seed: %w", err)
		}
	}
	if err := views.Close(); err != nil {
		return fmt.Errorf("seed: close %s: %w", viewsPath, err)
	}
	return nil
}

// passwordHashes makes n bcrypt hashes of random passwords, on every core.
func passwordHashes(n, cost int) ([]string, error) {
	hasher, err := keystore.NewHasher(cost, 0)
	if err != nil {
		return nil, fmt.Errorf("seed: %w", err)
	}
	out := make([]string, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	sem := make(chan struct{}, runtime.GOMAXPROCS(0))
	for i := range n {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			pw, err := keystore.GeneratePassword(keystore.MinPasswordLen)
			if err == nil {
				out[i], err = hasher.Hash(pw)
			}
			errs[i] = err
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("seed: hash passwords: %w", err)
	}
	return out, nil
}

type seeder struct {
	cfg    *seedConfig
	hashes []string
	store  *eventstore.SQLite
	now    time.Time
	users  atomic.Uint64
	events atomic.Uint64
}

func (s *seeder) run(ctx context.Context) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	work := make(chan uint64)
	var wg sync.WaitGroup
	for range s.cfg.Writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for c := range work {
				if err := s.seedUser(ctx, c); err != nil {
					cancel(err)
					return
				}
			}
		}()
	}
	first := uint64(s.cfg.FirstContact)
feed:
	for c := first; c < first+uint64(s.cfg.Users); c++ {
		select {
		case work <- c:
		case <-ctx.Done():
			break feed
		}
	}
	close(work)
	wg.Wait()
	if err := context.Cause(ctx); err != nil {
		return fmt.Errorf("seed: %w", err)
	}
	return nil
}

// seedUser appends contact c's history and its email and login
// reservations.
func (s *seeder) seedUser(ctx context.Context, c uint64) error {
	contact, email, reservations := s.history(c)
	for _, st := range []struct {
		name string
		envs []domain.Envelope
	}{{domain.ContactID(c).Stream(), contact}, {domain.EmailStream(email), reservations[:1]}, {domain.LoginStream(email), reservations[1:]}} {
		raw, err := domain.EncodeAll(st.envs)
		if err != nil {
			return err
		}
		if _, err := s.store.Append(ctx, st.name, domain.NoStream(), raw...); err != nil {
			return fmt.Errorf("append to %s: %w", st.name, err)
		}
		s.events.Add(uint64(len(raw)))
	}
	s.users.Add(1)
	return nil
}

// history is what usersync serve appends for contact c's webhooks: an add
// (receipt, user, tags, meta, outcome; and the reservations of the
// address, which is also the login), then update_tags and update webhooks
// that move the contact's tags, one in four of them changing nothing.
func (s *seeder) history(c uint64) (contact []domain.Envelope, email string, reservations []domain.Envelope) {
	cfg := s.cfg
	id := domain.ContactID(c)
	email = contactEmail(c)
	userID := uuid.NewString()
	// The user's add lies somewhere in the first half of the history, its
	// other webhooks between it and now.
	i := c - uint64(cfg.FirstContact)
	at := s.now.Add(-cfg.History).Add(time.Duration(float64(cfg.History/2) * float64(i) / float64(cfg.Users)))
	step := s.now.Sub(at) / time.Duration(cfg.WebhooksPerUser)
	add := func(wh string, at time.Time, events ...domain.Event) {
		for k, e := range events {
			contact = append(contact, domain.Envelope{Event: e, OccurredAt: at.Add(time.Duration(k) * time.Microsecond), WebhookID: wh})
		}
	}
	wh := newWebhookID(at)
	tags := tagSet(contactTags(c, 0))
	meta := []domain.MetaChange{{Key: "billing_country", New: "US"}, {Key: "first_name", New: "Load"}, {Key: "last_name", New: fmt.Sprint(c)}}
	add(wh, at,
		domain.WebhookReceived{WebhookID: wh, Action: domain.ActionAdd, ContactID: id.String(), Params: map[string]string{}, Method: "POST", Source: "127.0.0.1", ReceivedAt: at},
		domain.UserCreated{UserID: userID, ContactID: id, Login: email, Email: email, Role: "subscriber", PasswordHash: s.hashes[i%uint64(len(s.hashes))]},
		domain.TagsUpdated{Tags: tags, Added: tags},
		domain.MetaPulled{Changes: meta},
		domain.WebhookProcessed{WebhookID: wh, Action: domain.ActionAdd, Message: "User created", UserID: userID,
			Changed: []string{domain.TypeUserCreated, domain.TypeTagsUpdated, domain.TypeMetaPulled}},
	)
	reservations = []domain.Envelope{
		{Event: domain.EmailReserved{Email: email, ContactID: id, UserID: userID}, OccurredAt: at, WebhookID: wh},
		{Event: domain.LoginReserved{Login: email, ContactID: id, UserID: userID}, OccurredAt: at, WebhookID: wh},
	}
	changes := uint64(0)
	for j := 1; j < cfg.WebhooksPerUser; j++ {
		at := at.Add(time.Duration(j) * step)
		wh := newWebhookID(at)
		action, method := domain.ActionUpdateTags, "GET"
		if j%4 == 0 {
			action, method = domain.ActionUpdate, "POST"
		}
		received := domain.WebhookReceived{WebhookID: wh, Action: action, ContactID: id.String(), Params: map[string]string{}, Method: method, Source: "127.0.0.1", ReceivedAt: at}
		if j%4 == 3 {
			add(wh, at, received, domain.WebhookProcessed{WebhookID: wh, Action: action, Message: "No changes", UserID: userID})
			continue
		}
		changes++
		next := tagSet(contactTags(c, changes))
		added, removed := tagDiff(tags, next)
		add(wh, at, received,
			domain.TagsUpdated{Tags: next, Added: added, Removed: removed},
			domain.WebhookProcessed{WebhookID: wh, Action: action, Message: "User updated", UserID: userID, Changed: []string{domain.TypeTagsUpdated}})
		tags = next
	}
	return contact, email, reservations
}

// newWebhookID is a webhook id as usersync makes them (a UUIDv7), for
// the time the webhook was received.
func newWebhookID(at time.Time) string {
	u := uuid.Must(uuid.NewV7())
	ms := uint64(at.UnixMilli())
	for k := range 6 {
		u[k] = byte(ms >> (40 - 8*k))
	}
	return u.String()
}

func tagSet(ids []uint64) []domain.Tag {
	tags := make([]domain.Tag, len(ids))
	for k, id := range ids {
		tags[k] = domain.Tag{ID: id, Name: tagName(id)}
	}
	return domain.SortTags(tags)
}

// tagDiff is what going from old to next adds and removes (sorted by id).
func tagDiff(old, next []domain.Tag) (added, removed []domain.Tag) {
	has := func(set []domain.Tag, id uint64) bool {
		return slices.ContainsFunc(set, func(t domain.Tag) bool { return t.ID == id })
	}
	for _, t := range next {
		if !has(old, t.ID) {
			added = append(added, t)
		}
	}
	for _, t := range old {
		if !has(next, t.ID) {
			removed = append(removed, t)
		}
	}
	return added, removed
}

// follow draws the seed's progress until the returned function is called.
func (s *seeder) follow(p *progress) (stop func()) {
	if !p.on {
		return func() {}
	}
	done, finished := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(finished)
		tick := time.NewTicker(500 * time.Millisecond)
		defer tick.Stop()
		start := time.Now()
		for {
			select {
			case <-done:
				return
			case now := <-tick.C:
				u, e := s.users.Load(), s.events.Load()
				p.line(fmt.Sprintf("seeding %s  %d/%d users  %d events  %.0f events/s",
					bar(0, int64(u), s.cfg.Users), u, s.cfg.Users, e, float64(e)/now.Sub(start).Seconds()))
			}
		}
	}()
	return func() {
		close(done)
		<-finished
		p.end()
	}
}
