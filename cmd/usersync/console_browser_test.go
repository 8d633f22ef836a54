package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/usersync/usersync/domain"
)

// chromiumPath is Debian's chromium (.ci/run installs it).
const chromiumPath = "/usr/bin/chromium"

// newChromium starts a headless Chromium with a fresh profile and returns
// a browser context bounded by timeout.
func newChromium(t *testing.T, timeout time.Duration) context.Context {
	t.Helper()
	if _, err := os.Stat(chromiumPath); err != nil {
		t.Skipf("the console's browser test needs Debian's chromium at %s (apt-get install chromium; .ci/run installs it): %v", chromiumPath, err)
	}
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(chromiumPath),
		chromedp.Headless, chromedp.NoSandbox, chromedp.DisableGPU, chromedp.NoFirstRun, chromedp.NoDefaultBrowserCheck,
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1280, 900),
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	t.Cleanup(cancel)
	actx, cancelAlloc := chromedp.NewExecAllocator(ctx, opts...)
	t.Cleanup(cancelAlloc)
	bctx, cancelBrowser := chromedp.NewContext(actx)
	t.Cleanup(cancelBrowser)
	if err := chromedp.Do(bctx); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	return bctx
}

// shots saves screenshots under the test's artifact directory (and, when
// USERSYNC_SCREENSHOTS names a directory, there too).
type shots struct {
	t   *testing.T
	dir string
}

func (s shots) take(ctx context.Context, name string) {
	s.t.Helper()
	png, err := chromedp.Run(ctx, chromedp.CaptureScreenshot())
	if err != nil {
		s.t.Fatalf("screenshot %s: %v", name, err)
	}
	dirs := []string{s.dir}
	if extra := os.Getenv("USERSYNC_SCREENSHOTS"); extra != "" {
		dirs = append(dirs, extra)
	}
	for _, d := range dirs {
		if err := os.WriteFile(filepath.Join(d, name+".png"), png, 0o644); err != nil {
			s.t.Fatal(err)
		}
	}
}

// text is the text of the first element sel matches.
func text(t *testing.T, ctx context.Context, sel string) string {
	t.Helper()
	if err := chromedp.Do(ctx, chromedp.WaitVisible(chromedp.CSS(sel))); err != nil {
		t.Fatalf("wait for %s: %v", sel, err)
	}
	s, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS(sel)))
	if err != nil {
		t.Fatalf("read %s: %v", sel, err)
	}
	return s
}

func act(t *testing.T, ctx context.Context, what string, steps ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	if err := chromedp.Do(ctx, steps...); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

// The console in a real Chromium against a real server: a wrong token
// refused, sign-in, a search, one user's timeline after add, update_tags
// and update (the words and the meta diff on the page), a rebuild with
// its progress, a verify and a parked event's replay.
func TestConsole_InChromium(t *testing.T) {
	ctx := newChromium(t, 3*time.Minute)
	h := newHarness(t)
	sh := shots{t: t, dir: t.ArtifactDir()}

	// Given contact 1 added, its tags changed, then its membership.
	h.send("get", hook("add", "1"))
	h.send("form", hook("update_tags", "1", "tags", "3, VIP"))
	c, _ := h.sim.Contact(1)
	c.Fields["7"] = "platinum"
	h.sim.PutContact(c)
	h.send("get", hook("update", "1"))
	h.eventually("the meta change in the views", func() bool { u, _ := h.user(1); return u.Meta["membership"] == "platinum" })
	h.eventually("the password returned", func() bool { return count(h.history(1), domain.TypePasswordReturned) == 1 })

	// A wrong token is refused.
	act(t, ctx, "open the console",
		chromedp.Navigate(h.base+"/"),
		chromedp.WaitVisible(chromedp.ID("token")),
	)
	url, err := chromedp.Run(ctx, chromedp.Location())
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasSuffix(url, "/ui/signin") {
		t.Fatalf("a browser at / ended at %s, want the sign-in page", url)
	}
	act(t, ctx, "a wrong token",
		chromedp.SendKeys(chromedp.ID("token"), "not-the-token"),
		chromedp.Click(chromedp.ID("signin")),
		chromedp.WaitVisible(chromedp.ID("signin-error")),
	)
	if got := text(t, ctx, "#signin-error"); !strings.Contains(got, "Wrong admin token") {
		t.Fatalf("wrong token: %q", got)
	}
	sh.take(ctx, "signin-refused")

	// Sign-in, then a search.
	act(t, ctx, "sign in",
		chromedp.SendKeys(chromedp.ID("token"), testToken),
		chromedp.Click(chromedp.ID("signin")),
		chromedp.WaitVisible(chromedp.ID("count")),
	)
	act(t, ctx, "search ann",
		chromedp.SendKeys(chromedp.ID("q"), "ann@"),
		chromedp.Click(chromedp.ID("search")),
		chromedp.WaitVisible(chromedp.CSS(`a[href="/ui/users/1"]`)),
	)
	if got := text(t, ctx, "#count"); !strings.HasPrefix(got, "1 user match") {
		t.Fatalf("search ann@: %q", got)
	}
	sh.take(ctx, "users")

	// One user's timeline.
	act(t, ctx, "open contact 1",
		chromedp.Click(chromedp.CSS(`a[href="/ui/users/1"]`)),
		chromedp.WaitVisible(chromedp.ID("timeline")),
	)
	timeline := text(t, ctx, "#timeline")
	for _, want := range []string{"User created as subscriber", "Tags changed: +Trial −Customer", "Meta changed: membership gold → platinum", "update_tags", "processed"} {
		if !strings.Contains(timeline, want) {
			t.Errorf("the timeline does not show %q:\n%s", want, timeline)
		}
	}
	diff := text(t, ctx, "table.diff")
	if !strings.Contains(diff, "membership") || !strings.Contains(diff, "gold") || !strings.Contains(diff, "platinum") {
		t.Errorf("the meta diff: %q", diff)
	}
	sh.take(ctx, "user-timeline")

	// The same page on a phone's width: nothing wider than the screen
	// (no sideways scrolling), then back to the desktop size.
	act(t, ctx, "a phone's viewport", chromedp.EmulateViewport(375, 812), chromedp.WaitVisible(chromedp.ID("timeline")))
	if wide, err := chromedp.Run(ctx, chromedp.Evaluate[float64]("document.documentElement.scrollWidth")); err != nil {
		t.Fatal(err)
	} else if wide > 375 {
		t.Errorf("on a 375 px wide phone the user page is %v px wide: it scrolls sideways", wide)
	}
	sh.take(ctx, "user-timeline-phone")
	act(t, ctx, "back to the desktop viewport", chromedp.EmulateReset())

	// A rebuild, followed to its end on the page that refreshes itself.
	act(t, ctx, "start a rebuild",
		chromedp.Navigate(h.base+"/ui/ops"),
		chromedp.WaitVisible(chromedp.ID("checkpoints")),
	)
	sh.take(ctx, "operations")
	act(t, ctx, "rebuild", chromedp.Click(chromedp.ID("rebuild")), chromedp.WaitVisible(chromedp.ID("rebuild-status")))
	// The page shows the progress and refreshes itself until the end.
	wait, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	act(t, wait, "the rebuild's end", chromedp.WaitVisible(chromedp.ID("rebuild-finished")))
	if status := text(t, ctx, "#rebuild-status"); !strings.HasPrefix(status, "Rebuild done") {
		t.Fatalf("rebuild: %q", status)
	}
	bar, err := chromedp.Run(ctx, chromedp.AttributeValue(chromedp.CSS("progress"), "value"))
	if err != nil {
		t.Fatal(err)
	}
	if bar.Value != "100" {
		t.Errorf("the progress bar at the end: %q, want 100", bar.Value)
	}
	sh.take(ctx, "rebuild")

	// A verify.
	act(t, ctx, "verify",
		chromedp.Navigate(h.base+"/ui/ops"),
		chromedp.WaitVisible(chromedp.ID("verify")),
		chromedp.Click(chromedp.ID("verify")),
		chromedp.WaitVisible(chromedp.ID("verify-result")),
	)
	if got := text(t, ctx, "#verify-result"); !strings.HasPrefix(got, "The views equal a rebuild") {
		t.Errorf("verify: %q", got)
	}
	sh.take(ctx, "verify")

	// A parked event, replayed.
	var created historyEntry
	for _, e := range h.history(1) {
		if e.Type == domain.TypeUserCreated {
			created = e
		}
	}
	if err := h.app.views.Park(context.Background(), domain.ParkedEvent{Handler: "welcome_email", Position: created.Position, Stream: "contact-1",
		Version: created.Version, Type: created.Type, Error: "smtp down (parked by the test)", ParkedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	act(t, ctx, "the parked event",
		chromedp.Navigate(h.base+"/ui/ops"),
		chromedp.WaitVisible(chromedp.CSS("#parked button.replay")),
	)
	sh.take(ctx, "parked")
	act(t, ctx, "replay it",
		chromedp.Click(chromedp.CSS("#parked button.replay")),
		chromedp.WaitVisible(chromedp.ID("no-parked")),
	)
	if got := text(t, ctx, "p.notice"); !strings.Contains(got, "replayed event") {
		t.Errorf("after the replay: %q", got)
	}
	if got := text(t, ctx, "#actions"); !strings.Contains(got, "Operator parked replay of welcome_email event") || !strings.Contains(got, "Operator verify from 127.0.0.1 with the admin token: 0 differences") {
		t.Errorf("the operator actions: %q", got)
	}
	sh.take(ctx, "operations-after-replay")
}
