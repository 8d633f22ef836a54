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

	"github.com/usersync/usersync/eventstore/esdb/esdbtest"
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
