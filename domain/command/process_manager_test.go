package command_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/usersync/usersync/domain"
	"github.com/usersync/usersync/domain/command"
	"github.com/usersync/usersync/eventstore/memory"
)

// The helpers and fakes of the process-manager tests are prefixed with pm,
// so that they never clash with those of the other use cases' tests.

// pmContact is the contact every scenario is about.
const pmContact domain.ContactID = 7

// pmWebhook caused the given events.
const pmWebhook = "wh-1"

// pmNow is the fixed clock of the process managers under test. It lies in
// the past, so that a wait until a NextAttemptAt it computes ends at once.
func pmNow() time.Time { return time.Date(2020, 3, 4, 5, 6, 7, 0, time.UTC) }

// pmWait bounds every wait for a background return.
const pmWait = 10 * time.Second

// pmNewStore returns an empty event store.
func pmNewStore(t *testing.T) domain.EventStore {
	t.Helper()
	s := memory.New()
	t.Cleanup(func() { s.Close() })
	return s
}

// pmGiven appends events to the stream of contact id, as caused by
// pmWebhook, and returns them as recorded.
func pmGiven(t *testing.T, store domain.EventStore, id domain.ContactID, events ...domain.Event) []domain.RecordedEvent {
	t.Helper()
	ctx := context.Background()
	before, err := store.ReadStream(ctx, id.Stream())
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range events {
		raw, err := domain.Encode(domain.Envelope{Event: e, OccurredAt: pmNow(), WebhookID: pmWebhook})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := store.Append(ctx, id.Stream(), domain.AnyVersion(), raw); err != nil {
			t.Fatal(err)
		}
	}
	after, err := store.ReadStream(ctx, id.Stream())
	if err != nil {
		t.Fatal(err)
	}
	return after[len(before):]
}

// pmAppended decodes the events of contact id's stream after the first
// skip ones.
func pmAppended(t *testing.T, store domain.EventStore, id domain.ContactID, skip int) []domain.Envelope {
	t.Helper()
	recs, err := store.ReadStream(context.Background(), id.Stream())
	if err != nil {
		t.Fatal(err)
	}
	var out []domain.Envelope
	for _, r := range recs[skip:] {
		env, err := domain.Decode(r)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, env)
	}
	return out
}

// pmCheckCause checks that the appended events are caused by pmWebhook
// and dated by the process manager's clock, pmNow.
func pmCheckCause(t *testing.T, envs []domain.Envelope) {
	t.Helper()
	for _, env := range envs {
		if env.WebhookID != pmWebhook {
			t.Errorf("%s caused by webhook %q, want %q", env.Event.EventType(), env.WebhookID, pmWebhook)
		}
		if !env.OccurredAt.Equal(pmNow()) {
			t.Errorf("%s occurred at %s, want the process manager's clock %s", env.Event.EventType(), env.OccurredAt, pmNow())
		}
	}
}

// pmEvents is the events of envs (nil for none).
func pmEvents(envs []domain.Envelope) []domain.Event {
	var out []domain.Event
	for _, e := range envs {
		out = append(out, e.Event)
	}
	return out
}

// pmResults is the events of envs but the claims (nil for none), after
// checking that each result follows the claim of its attempt, and each
// claim names the next attempt.
func pmResults(t *testing.T, envs []domain.Envelope) []domain.Event {
	t.Helper()
	var out []domain.Event
	claimed := 0
	for i, e := range envs {
		var attempt int
		switch e := e.Event.(type) {
		case domain.PasswordReturnClaimed:
			claimed = e.Attempt
			continue
		case domain.WelcomeEmailClaimed:
			claimed = e.Attempt
			continue
		case domain.PasswordReturned:
			attempt = e.Attempt
		case domain.PasswordReturnFailed:
			attempt = e.Attempt
		case domain.WelcomeEmailSent:
			attempt = e.Attempt
		case domain.WelcomeEmailFailed:
			attempt = e.Attempt
		}
		if attempt != 0 && (i == 0 || claimed != attempt) {
			t.Errorf("%s of attempt %d follows no claim of it (last claim: attempt %d)", e.Event.EventType(), attempt, claimed)
		}
		out = append(out, e.Event)
	}
	return out
}

// pmCheckpoints is an in-memory Checkpoints that counts its saves.
type pmCheckpoints struct {
	mu    sync.Mutex
	pos   map[string]uint64
	saves int
	err   error
}

func (c *pmCheckpoints) Checkpoint(_ context.Context, name string) (uint64, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return 0, c.err
	}
	return c.pos[name], nil
}

func (c *pmCheckpoints) SaveCheckpoint(_ context.Context, name string, pos uint64) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return c.err
	}
	if c.pos == nil {
		c.pos = map[string]uint64{}
	}
	c.pos[name] = pos
	c.saves++
	return nil
}

func (c *pmCheckpoints) saved(name string) (uint64, int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.pos[name], c.saves
}

// pmOutcomes collects what OnResult is told.
type pmOutcomes struct {
	mu  sync.Mutex
	got []string
}

func (o *pmOutcomes) add(outcome string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.got = append(o.got, outcome)
}

func (o *pmOutcomes) list() []string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return slices.Clone(o.got)
}

// pmTempError is a failure that says whether it is temporary.
type pmTempError struct {
	msg  string
	temp bool
}

func (e pmTempError) Error() string   { return e.msg }
func (e pmTempError) Temporary() bool { return e.temp }

// pmLog is a logger whose text output the test can read.
type pmLog struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *pmLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *pmLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

func (l *pmLog) logger() *slog.Logger { return slog.New(slog.NewTextHandler(l, nil)) }

// pmConfig is a valid configuration over store and cps.
func pmConfig(store domain.EventStore, cps command.Checkpoints) command.ProcessManagerConfig {
	return command.ProcessManagerConfig{Store: store, Checkpoints: cps,
		Retry: domain.Backoff{Initial: time.Second, Max: time.Minute}, Now: pmNow,
		Rand: func() float64 { return 0 }, Wait: pmInstant}
}

// pmInstant is a wait in which the time passes at once (the process
// managers' fixed clock then moves on to the time waited for).
func pmInstant(ctx context.Context, _ time.Time) bool { return ctx.Err() == nil }

func TestProcessManagerConfig_Validate(t *testing.T) {
	store := pmNewStore(t)
	cps := &pmCheckpoints{}
	tests := []struct {
		name string
		// given
		edit func(*command.ProcessManagerConfig)
		// then
		want string
	}{
		{name: "a full configuration", edit: func(*command.ProcessManagerConfig) {}},
		{name: "zero optional fields", edit: func(c *command.ProcessManagerConfig) {
			*c = command.ProcessManagerConfig{Store: store, Checkpoints: cps}
		}},
		{name: "no store", edit: func(c *command.ProcessManagerConfig) { c.Store = nil }, want: "Store is required"},
		{name: "no checkpoints", edit: func(c *command.ProcessManagerConfig) { c.Checkpoints = nil }, want: "Checkpoints is required"},
		{name: "negative attempts", edit: func(c *command.ProcessManagerConfig) { c.MaxAttempts = -1 },
			want: "MaxAttempts is -1, want at least 1 (0 for the default 8)"},
		{name: "negative concurrency", edit: func(c *command.ProcessManagerConfig) { c.Concurrency = -2 },
			want: "Concurrency is -2, want at least 1 (0 for the default 4)"},
		{name: "negative retry", edit: func(c *command.ProcessManagerConfig) { c.Retry.Initial = -time.Second },
			want: "Retry has a negative delay (Initial -1s, Max 1m0s)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// Given a configuration.
			cfg := pmConfig(store, cps)
			tt.edit(&cfg)

			// When it is validated, and given to both constructors.
			err := cfg.Validate()
			r, rerr := command.NewPasswordReturner(cfg, &pmFieldWriter{}, &pmKeys{})
			w, werr := command.NewWelcomer(cfg, &pmMailer{})

			// Then it is refused with a message that names the problem, or
			// accepted.
			if tt.want == "" {
				if err != nil || rerr != nil || werr != nil {
					t.Fatalf("Validate = %v, NewPasswordReturner = %v, NewWelcomer = %v; want no error", err, rerr, werr)
				}
				r.Stop()
				if r.Name() != command.PasswordReturnName || w.Name() != command.WelcomeEmailName {
					t.Errorf("names %q, %q; want %q, %q", r.Name(), w.Name(), command.PasswordReturnName, command.WelcomeEmailName)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Validate = %v, want an error containing %q", err, tt.want)
			}
			for _, c := range []struct {
				err    error
				prefix string
			}{{rerr, "configure process manager password_return: "}, {werr, "configure process manager welcome_email: "}} {
				if c.err == nil || !strings.HasPrefix(c.err.Error(), c.prefix) || !strings.Contains(c.err.Error(), tt.want) {
					t.Errorf("constructor: %v, want %q… containing %q", c.err, c.prefix, tt.want)
				}
			}
		})
	}
}

func TestConstructors_RefuseMissingPorts(t *testing.T) {
	cfg := pmConfig(pmNewStore(t), &pmCheckpoints{})
	if _, err := command.NewPasswordReturner(cfg, nil, &pmKeys{}); err == nil {
		t.Error("NewPasswordReturner without a FieldWriter: no error")
	}
	if _, err := command.NewPasswordReturner(cfg, &pmFieldWriter{}, nil); err == nil {
		t.Error("NewPasswordReturner without an Unsealer: no error")
	}
	if _, err := command.NewWelcomer(cfg, nil); err == nil {
		t.Error("NewWelcomer without a Mailer: no error")
	}
}

func TestProcessNames(t *testing.T) {
	if got, want := command.ProcessNames(), []string{"password_return", "welcome_email"}; !slices.Equal(got, want) {
		t.Errorf("ProcessNames() = %v, want %v", got, want)
	}
}

func TestProcessManager_Checkpoint(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name string
		// given
		saved uint64
		// when
		handle int
		skip   uint64
		// then
		wantCurrent uint64
		wantSaved   uint64
		wantSaves   int
	}{
		{name: "position reads the saved checkpoint", saved: 41, wantCurrent: 41, wantSaved: 41},
		{name: "events not acted on are not saved one by one", handle: 10, wantCurrent: 10},
		{name: "256 events not acted on save the checkpoint", handle: 256, wantCurrent: 256, wantSaved: 256, wantSaves: 1},
		{name: "a skipped event saves the checkpoint", saved: 3, skip: 9, wantCurrent: 9, wantSaved: 9, wantSaves: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// Given a welcome mailer whose checkpoint is at tt.saved.
			cps := &pmCheckpoints{pos: map[string]uint64{command.WelcomeEmailName: tt.saved}}
			w, err := command.NewWelcomer(pmConfig(pmNewStore(t), cps), &pmMailer{})
			if err != nil {
				t.Fatal(err)
			}
			if pos, err := w.Position(ctx); err != nil || pos != tt.saved {
				t.Fatalf("Position = %d, %v; want %d", pos, err, tt.saved)
			}

			// When it handles events it does not act on, or skips one.
			for i := 1; i <= tt.handle; i++ {
				rec := domain.RecordedEvent{Position: uint64(i), Stream: pmContact.Stream(), Type: domain.TypeTagsUpdated}
				if err := w.Handle(ctx, rec); err != nil {
					t.Fatal(err)
				}
			}
			if tt.skip != 0 {
				if err := w.Skip(ctx, tt.skip); err != nil {
					t.Fatal(err)
				}
			}

			// Then the checkpoint moves in memory, and is saved when due.
			if got := w.Current(); got != tt.wantCurrent {
				t.Errorf("Current() = %d, want %d", got, tt.wantCurrent)
			}
			if tt.handle == 0 && tt.skip == 0 {
				return
			}
			if pos, saves := cps.saved(command.WelcomeEmailName); pos != tt.wantSaved || saves != tt.wantSaves {
				t.Errorf("saved checkpoint %d in %d saves, want %d in %d", pos, saves, tt.wantSaved, tt.wantSaves)
			}
		})
	}
}

func TestProcessManager_CheckpointErrorsAreNamed(t *testing.T) {
	// Given checkpoints that fail.
	ctx := context.Background()
	broken := errors.New("disk full")
	cps := &pmCheckpoints{err: broken}
	w, err := command.NewWelcomer(pmConfig(pmNewStore(t), cps), &pmMailer{})
	if err != nil {
		t.Fatal(err)
	}

	// When the process manager reads and saves its checkpoint.
	_, perr := w.Position(ctx)
	serr := w.Skip(ctx, 5)

	// Then the errors say which checkpoint, and wrap the cause.
	if !errors.Is(perr, broken) || !strings.Contains(perr.Error(), "checkpoint of welcome_email") {
		t.Errorf("Position: %v, want the cause wrapped with the checkpoint's name", perr)
	}
	if !errors.Is(serr, broken) || !strings.Contains(serr.Error(), "checkpoint of welcome_email at 5") {
		t.Errorf("Skip: %v, want the cause wrapped with the checkpoint's name and position", serr)
	}
}
