package main

// The end-to-end tests run a second time on EventStoreDB:
// TestEndToEnd_OnEventStoreDB runs this test binary again with
// USERSYNC_TEST_STORE=standin, and there every harness (start) puts usersync
// on an in-process EventStoreDB stand-in (eventstore/esdb/esdbtest: a gRPC
// server speaking EventStoreDB's protocol with its semantics, since no
// EventStoreDB server can run here) through the real esdb client, instead
// of the embedded store.

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/usersync/usersync/domain"
	"github.com/usersync/usersync/eventstore"
	"github.com/usersync/usersync/eventstore/esdb/esdbtest"
	"github.com/usersync/usersync/funnelkit/simulator"
	"github.com/usersync/usersync/projections"
)

// testStoreEnv names the store the end-to-end harness uses: empty for the
// embedded store, "standin" for EventStoreDB's stand-in.
const testStoreEnv = "USERSYNC_TEST_STORE"

// testStore is the --store of a harness on dir: empty (the embedded store),
// or under USERSYNC_TEST_STORE=standin the connection string of a stand-in
// kept for dir, so that a restart on the same directory finds its events.
func testStore(t *testing.T, dir string) string {
	t.Helper()
	if os.Getenv(testStoreEnv) != "standin" {
		return ""
	}
	marker := filepath.Join(dir, "standin.addr")
	if b, err := os.ReadFile(marker); err == nil {
		return string(b)
	}
	srv := esdbtest.New(t)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(marker, []byte(srv.ConnString()), 0o600); err != nil {
		t.Fatal(err)
	}
	return srv.ConnString()
}

// endToEndOnESDB are the tests run again on the stand-in: every test that
// starts usersync through the harness.
var endToEndOnESDB = []string{
	"TestProtocolTable", "TestAddUpdateUpdateTags_EveryTransport", "TestRoles_AdministratorNeverGranted",
	"TestDuplicateAdd_OneUserWhateverTheConcurrency", "TestEmailClash_LinksTheExistingUser", "TestTagsParam",
	"TestFailedCRMRead_NeverWipesTags", "TestCRMUnavailable_QueuedAndRetriedNeverDropped", "TestAsync_AnswersAtOnce",
	"TestPasswordReturn_FunnelKitFailsTwiceFirst", "TestRestart_InTheMiddleOfAQueue", "TestReadAPI",
	"TestWelcomeEmail_OverRealSMTP_RetriedAfterATemporaryFailure", "TestPasswordReturn_GivenUpAfterTheLimit_KeyDestroyed",
	"TestEmailChange", "TestSameEmail_TwoContactsConcurrently", "TestPasswordReturn_OneSlowContactDoesNotHoldBackOthers",
	"TestPasswordReturn_ResumesAfterARestart",
	"TestAbuse_AdministratorNeverGranted", "TestAbuse_KeyGuessingIsThrottledGoodWebhooksPass",
	"TestAbuse_OversizedAndMalformedRequests", "TestAbuse_SlowClientsAreDropped",
	"TestMetrics_MoveWithAnEndToEndRun", "TestOutage_EveryAcknowledgedWebhookEndsProcessed",
	// Not here: TestServe_StartsOverAStoreWithoutViews_NotReadyUntilCaughtUp
	// writes its history into events.db directly (its EventStoreDB
	// counterpart is in eventstore/esdb and the pipeline's gapped-log tests).
}

func TestEndToEnd_OnEventStoreDB(t *testing.T) {
	if os.Getenv(testStoreEnv) != "" {
		t.Skip("already on the stand-in")
	}
	if testing.Short() {
		t.Skip("-short: the end-to-end tests are not run again on EventStoreDB")
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, exe, "-test.run", "^("+strings.Join(endToEndOnESDB, "|")+")$", "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(), testStoreEnv+"=standin")
	out, err := cmd.CombinedOutput()
	var missing []string
	for _, name := range endToEndOnESDB {
		if !strings.Contains(string(out), "\n--- PASS: "+name+" ") {
			missing = append(missing, name)
		}
	}
	if err != nil || len(missing) > 0 {
		t.Fatalf("the end-to-end tests on the EventStoreDB stand-in: %v; not passed: %v\n%s", err, missing, out)
	}
	t.Logf("%d end-to-end tests passed on the EventStoreDB stand-in", len(endToEndOnESDB))
}

// TestMigrate_ThenServeOnEventStoreDB: usersync runs on the embedded store,
// stops; usersync migrate copies its log into EventStoreDB (the stand-in,
// through the real client), stopped half way once and run again, then a
// third time; serve on the same data directory with --store continues: the
// same users, no password returned twice, new webhooks processed.
func TestMigrate_ThenServeOnEventStoreDB(t *testing.T) {
	if os.Getenv(testStoreEnv) != "" {
		t.Skip("migrates from the embedded store")
	}
	ctx := context.Background()
	sim, u := newSim(t)
	dir := t.TempDir()
	h := start(t, dir, sim, u)
	for _, id := range []string{"1", "2", "5"} {
		if a := h.send("get", hook("add", id)); a.Code != 200 {
			t.Fatalf("add %s: %+v", id, a)
		}
	}
	if a := h.send("form", hook("update_tags", "1")); a.Code != 200 {
		t.Fatalf("update_tags: %+v", a)
	}
	h.eventually("three passwords returned", func() bool { return len(sim.FieldWrites()) == 3 })
	before := map[int]projections.User{}
	for _, id := range []int{1, 2, 5} {
		usr, ok := h.user(id)
		if !ok {
			t.Fatalf("user %d missing", id)
		}
		before[id] = usr
	}
	if err := h.app.shutdown(); err != nil {
		t.Fatal(err)
	}
	srv := esdbtest.New(t)
	sim.PutContact(simulator.Contact{ID: 6, Email: "eve@example.com", FirstName: "Eve"})

	// What a migration killed half way leaves: the first half of the log,
	// copied in order.
	src, err := eventstore.Open(ctx, filepath.Join(dir, "events.db"))
	if err != nil {
		t.Fatal(err)
	}
	dst, err := openMigrationTarget(ctx, srv.ConnString())
	if err != nil {
		t.Fatal(err)
	}
	head, _ := src.Head(ctx)
	firstHalf, err := src.ReadAll(ctx, 0, int(head/2))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range firstHalf {
		if _, err := copyRun(ctx, dst, []domain.RecordedEvent{e}); err != nil {
			t.Fatal(err)
		}
	}
	dst.Close()
	src.Close()

	for attempt := range 2 {
		var out, errb strings.Builder
		code := run(ctx, []string{"migrate", "--from", dir, "--to", srv.ConnString(), "--progress", "off"}, &out, &errb)
		if code != 0 || !strings.Contains(out.String(), "every stream has the same events") {
			t.Fatalf("migrate run %d: exit %d\n%s%s", attempt+1, code, out.String(), errb.String())
		}
		if attempt == 0 && !strings.Contains(out.String(), "moved the checkpoints") {
			t.Fatalf("migrate did not move the checkpoints:\n%s", out.String())
		}
		if attempt == 1 && !strings.Contains(out.String(), "copied 0 events") {
			t.Fatalf("a second migrate copied again:\n%s", out.String())
		}
	}
	if srv.StreamLen("contact-1") == 0 {
		t.Fatal("contact-1 is not in EventStoreDB")
	}

	// Serve on EventStoreDB with the same data directory.
	writes := len(sim.FieldWrites())
	h = start(t, dir, sim, u, func(c *serveConfig) { c.Store = srv.ConnString() })
	if code, reason := readyzWithin(t, h.base); code != 200 {
		t.Fatalf("/readyz after the migration: %d %q", code, reason)
	}
	for id, want := range before {
		got, ok := h.user(id)
		if !ok || got.UserID != want.UserID || got.Email != want.Email {
			t.Fatalf("user %d after the migration: %+v, want %+v", id, got, want)
		}
	}
	if a := h.send("get", hook("add", "6")); a.Code != 200 || a.User == nil {
		t.Fatalf("add on EventStoreDB: %+v", a)
	}
	h.eventually("the new user's password returned", func() bool { return len(sim.FieldWrites()) == writes+1 })
	for _, w := range sim.FieldWrites()[writes:] {
		if w.ContactID != 6 {
			t.Fatalf("a password was returned again after the migration: %+v", w)
		}
	}
}

// readyzWithin waits (with a deadline) for /readyz to answer 200.
func readyzWithin(t *testing.T, base string) (int, string) {
	t.Helper()
	deadline := time.Now().Add(waitDeadline)
	for {
		code, reason := readyz(t, base)
		if code == 200 || time.Now().After(deadline) {
			return code, reason
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestESDB_LostWhileRunning: EventStoreDB goes away under a running
// usersync: a webhook that cannot be recorded is answered 503 with a
// message (never 200), /readyz says the store is unreachable; once it is
// back, webhooks are recorded and processed again and the one acknowledged
// before the loss is there.
func TestESDB_LostWhileRunning(t *testing.T) {
	if os.Getenv(testStoreEnv) != "" {
		t.Skip("starts its own stand-in")
	}
	t.Parallel()
	sim, u := newSim(t)
	srv := esdbtest.New(t)
	h := start(t, t.TempDir(), sim, u, func(c *serveConfig) { c.Store = srv.ConnString() })
	before := h.send("get", hook("add", "1"))
	if before.Code != 200 {
		t.Fatalf("add before the loss: %+v", before)
	}

	srv.SetUnavailable(true)
	a := h.send("get", hook("update_tags", "1"))
	if a.Code != 503 || a.Success || !strings.Contains(a.Message, "not recorded") {
		t.Fatalf("a webhook while the store is unreachable: %+v", a)
	}
	if code, reason := readyz(t, h.base); code != 503 || !strings.Contains(reason, "event store unreachable") || !strings.Contains(reason, srv.Addr()) {
		t.Fatalf("/readyz while the store is unreachable: %d %q", code, reason)
	}

	srv.SetUnavailable(false)
	if code, reason := readyzWithin(t, h.base); code != 200 {
		t.Fatalf("/readyz once the store is back: %d %q", code, reason)
	}
	if a := h.send("form", hook("update_tags", "1")); a.Code != 200 {
		t.Fatalf("a webhook once the store is back: %+v", a)
	}
	if r := h.receipt(before.WebhookID); r.Status != "processed" {
		t.Fatalf("the webhook acknowledged before the loss: %+v", r)
	}
}
