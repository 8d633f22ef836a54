package command

import (
	"context"
	"reflect"
	"testing"
	"time"

	"github.com/usersync/usersync/domain"
)

// hook is a webhook of a coalescing scenario: an action and its params,
// or, with crm set, a change of FunnelKit before the next webhooks.
type hook struct {
	action string
	params map[string]string
	crm    func(w *world)
}

// run records the scenario's webhooks for contact 7 (FunnelKit changes
// happen between processing rounds: all webhooks recorded before one are
// processed before it) and processes them with process until none is
// open, returning the outcomes in order.
func runScenario(t *testing.T, w *world, given func(w *world), hooks []hook, process func() []Outcome) []Outcome {
	t.Helper()
	given(w)
	var outs []Outcome
	drain := func() {
		for range 100 {
			got := process()
			if len(got) == 0 {
				return
			}
			outs = append(outs, got...)
			if last := got[len(got)-1]; last.Status == StatusRetrying {
				// FunnelKit comes back, the retry is due.
				w.crm.mu.Lock()
				w.crm.contactErr = nil
				w.crm.mu.Unlock()
				w.setNow(last.RetryAt.Add(time.Second))
			}
		}
		t.Fatal("the webhooks never all closed")
	}
	for _, h := range hooks {
		if h.crm != nil {
			drain()
			h.crm(w)
			continue
		}
		w.webhook(7, h.action, h.params)
	}
	drain()
	return outs
}

// outcomeView is what an outcome says, without the log position (one
// batch append has one).
type outcomeView struct {
	WebhookID, Status, Message, UserID string
	Err                                string
}

func viewOutcomes(outs []Outcome) []outcomeView {
	out := make([]outcomeView, 0, len(outs))
	for _, o := range outs {
		v := outcomeView{WebhookID: o.WebhookID, Status: o.Status, Message: o.Message, UserID: o.UserID}
		if o.Err != nil {
			v.Err = o.Err.Error()
		}
		out = append(out, v)
	}
	return out
}

func TestCoalescing_BatchedResultEqualsOneByOne(t *testing.T) {
	const id = domain.ContactID(7)
	existing := func(w *world) {
		w.crm.tags = []domain.Tag{vip, trial}
		w.crm.set(contact(id, "ada@example.com", vip))
		w.user(id, "u7", "ada@example.com", vip)
	}
	newContact := func(w *world) {
		w.crm.tags = []domain.Tag{vip, trial}
		w.crm.set(contact(id, "ada@example.com", vip, trial))
	}
	tests := []struct {
		name  string
		given func(w *world)
		hooks []hook
		// batches is how many NextBatch calls that recorded something
		// the batched run needs at most.
		batches int
		// extraReads is how many FunnelKit reads the batched run may make
		// beyond the one-by-one run: a webhook that ends a batch after its
		// read is read again when decided alone.
		extraReads int
	}{
		{
			name: "add then updates of a new contact", given: newContact,
			hooks: []hook{
				{action: domain.ActionAdd, params: map[string]string{"send_notification": "1"}},
				{action: domain.ActionUpdateTags},
				{action: domain.ActionUpdate, params: map[string]string{"role": "editor"}},
				{action: domain.ActionUpdateTags, params: map[string]string{"tags": "2"}},
				{action: domain.ActionAdd},
			},
			batches: 1,
		},
		{
			name: "updates of an existing user, FunnelKit changing in between", given: existing,
			hooks: []hook{
				{action: domain.ActionUpdateTags},
				{action: domain.ActionUpdate},
				{action: domain.ActionUpdateTags, params: map[string]string{"tags": "VIP,Trial"}},
				{crm: func(w *world) {
					c := contact(id, "ada@example.com", trial)
					c.Fields["f_name"] = "Augusta"
					w.crm.set(c)
				}},
				{action: domain.ActionUpdate, params: map[string]string{"role": "customer"}},
				{action: domain.ActionUpdateTags},
				{action: domain.ActionUpdate, params: map[string]string{"role": "administrator"}},
			},
			batches: 2,
		},
		{
			name: "a webhook that fails for good stays in the batch", given: existing,
			hooks: []hook{
				{action: domain.ActionUpdateTags},
				{action: domain.ActionUpdateTags, params: map[string]string{"tags": "nope"}},
				{action: domain.ActionUpdate, params: map[string]string{"role": "editor"}},
			},
			batches: 1,
		},
		{
			name: "an email change ends the batch before it", given: existing,
			hooks: []hook{
				{crm: func(w *world) { w.crm.set(contact(id, "augusta@example.com", vip)) }},
				{action: domain.ActionUpdateTags, params: map[string]string{"tags": "2"}},
				{action: domain.ActionUpdate},
				{action: domain.ActionUpdateTags},
			},
			batches: 3, extraReads: 1,
		},
		{
			name: "a contact without a user: ignored, created, updated", given: newContact,
			hooks: []hook{
				{action: domain.ActionUpdateTags},
				{action: domain.ActionUpdate},
				{action: domain.ActionAdd},
				{action: domain.ActionUpdateTags},
			},
			batches: 3,
		},
		{
			name: "FunnelKit down for a later webhook: the batch ends before it, it is retried, order holds", given: existing,
			hooks: []hook{
				{action: domain.ActionUpdateTags, params: map[string]string{"tags": "2"}},
				{crm: func(w *world) {
					w.crm.mu.Lock()
					w.crm.contactErr = errCRMDown
					w.crm.mu.Unlock()
				}},
				{action: domain.ActionUpdateTags, params: map[string]string{"tags": "1"}},
				{action: domain.ActionUpdate},
				{action: domain.ActionUpdateTags},
			},
			batches: 4,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			// Given the same world twice
			one, batched := newWorld(t, testPolicy()), newWorld(t, testPolicy())
			// When one processes the webhooks one by one and the other in batches
			ctx := context.Background()
			oneOuts := runScenario(t, one, tc.given, tc.hooks, func() []Outcome {
				out, ok, err := one.proc.Next(ctx, id)
				if err != nil {
					t.Fatal(err)
				}
				if !ok {
					return nil
				}
				return []Outcome{out}
			})
			appends := 0
			batchedOuts := runScenario(t, batched, tc.given, tc.hooks, func() []Outcome {
				outs, err := batched.proc.NextBatch(ctx, id, 0)
				if err != nil {
					t.Fatal(err)
				}
				if len(outs) > 0 && outs[0].Position != 0 {
					appends++
				}
				return outs
			})
			// Then the outcomes, the streams and the user are the same
			if got, want := viewOutcomes(batchedOuts), viewOutcomes(oneOuts); !reflect.DeepEqual(got, want) {
				t.Errorf("batched outcomes\n%+v\nwant (one by one)\n%+v", got, want)
			}
			for _, stream := range []string{id.Stream(), domain.EmailStream("ada@example.com"), domain.EmailStream("augusta@example.com"), domain.LoginStream("ada@example.com")} {
				if got, want := batched.events(stream, 0), one.events(stream, 0); !reflect.DeepEqual(got, want) {
					t.Errorf("%s batched\n%v\nwant (one by one)\n%v", stream, types(got), types(want))
				}
			}
			if got, want := batched.state(id), one.state(id); !reflect.DeepEqual(got.User, want.User) {
				t.Errorf("user batched %+v, want %+v", got.User, want.User)
			}
			// and the batches appended fewer times and read FunnelKit less
			if appends > tc.batches {
				t.Errorf("the batched run appended %d times, want at most %d", appends, tc.batches)
			}
			if batched.crm.reads > one.crm.reads+tc.extraReads {
				t.Errorf("the batched run read FunnelKit %d times, one by one %d", batched.crm.reads, one.crm.reads)
			}
		})
	}
}

func TestCoalescing_QueuedUpdates_OneFunnelKitReadAndOneAppend(t *testing.T) {
	// Given a user with five updates queued
	const id = domain.ContactID(7)
	w := newWorld(t, testPolicy())
	w.crm.set(contact(id, "ada@example.com", vip, trial))
	w.user(id, "u7", "ada@example.com", vip)
	var hooks []string
	for _, a := range []string{domain.ActionUpdateTags, domain.ActionUpdate, domain.ActionUpdateTags, domain.ActionAdd, domain.ActionUpdate} {
		hooks = append(hooks, w.webhook(id, a, nil))
	}
	before := w.length(id.Stream())
	// When the contact is processed
	outs, err := w.proc.NextBatch(context.Background(), id, 0)
	if err != nil {
		t.Fatal(err)
	}
	// Then all five are decided on one FunnelKit read and appended at once,
	// each with its own outcome event and Outcome
	if len(outs) != 5 || w.crm.reads != 1 {
		t.Fatalf("%d outcomes on %d FunnelKit reads, want 5 on 1", len(outs), w.crm.reads)
	}
	for i, o := range outs {
		if o.WebhookID != hooks[i] || o.Status != StatusProcessed || o.Position == 0 || o.Position != outs[0].Position {
			t.Errorf("outcome %d = %+v, want webhook %s processed at the batch's position", i, o, hooks[i])
		}
	}
	if outs[0].Message != "User updated" || outs[1].Message != "User updated" || outs[4].Message != "No changes" {
		t.Errorf("messages %q, %q, %q", outs[0].Message, outs[1].Message, outs[4].Message)
	}
	appended := w.events(id.Stream(), before)
	var closed int
	for _, e := range appended {
		if _, ok := e.(domain.WebhookProcessed); ok {
			closed++
		}
	}
	if closed != 5 {
		t.Errorf("appended %v, want an outcome for each webhook", types(appended))
	}
	if s := w.state(id); len(s.Pending) != 0 {
		t.Errorf("still open: %+v", s.Pending)
	}
}

func TestCoalescing_LimitBoundsTheBatch(t *testing.T) {
	const id = domain.ContactID(7)
	w := newWorld(t, testPolicy())
	w.crm.set(contact(id, "ada@example.com", vip))
	w.user(id, "u7", "ada@example.com", vip)
	for range 5 {
		w.webhook(id, domain.ActionUpdateTags, nil)
	}
	for _, want := range []int{2, 2, 1, 0} {
		outs, err := w.proc.NextBatch(context.Background(), id, 2)
		if err != nil {
			t.Fatal(err)
		}
		if len(outs) != want {
			t.Fatalf("NextBatch(2) decided %d, want %d", len(outs), want)
		}
	}
}
