package projections

import (
	"hash/fnv"
	"reflect"
	"runtime/debug"
	"testing"

	json "github.com/goccy/go-json"
)

func TestStoredWebhook_RoundTrip(t *testing.T) {
	for _, w := range []storedWebhook{
		{"01a21e0c-f607", "add", 12, "processed", "User created", 0, 1764264000000000000, 1764264000000000001},
		{"x", "unknown", 0, "failed", `tags: no FunnelKit tag is named "Nope" \ <b>&`, 3, 0, -1},
		{"é", "update", 1<<63 + 5, "queued", "línea\nnueva\ttab\u2028\x01", 1, 1, 2},
	} {
		b := w.appendJSON(nil)
		if !json.Valid(b) {
			t.Fatalf("not JSON: %s", b)
		}
		var back storedWebhook
		if err := json.Unmarshal(b, &back); err != nil {
			t.Fatalf("%s: %v", b, err)
		}
		if !reflect.DeepEqual(back, w) {
			t.Fatalf("round trip:\n%+v\n%+v", w, back)
		}
	}
}

func TestHashString_IsFNV1a(t *testing.T) {
	for _, k := range []string{"", "a", "wh-1-0", "01a21e0c-f607-4a4c-9d0e-5b9a8c7e2f11", "é\x00\xff\u2028", string(make([]byte, 300))} {
		h := fnv.New32a()
		h.Write([]byte(k))
		if got, want := hashString(k), h.Sum32(); got != want {
			t.Errorf("hashString(%q) = %d, hash/fnv gives %d", k, got, want)
		}
	}
}

// A rebuild runs the collector less often, and puts back what was set
// before once the last of several at once is done; an operator's own GOGC
// is left alone.
func TestCollectLess_RaisesTheCollectorPercentUnlessGOGCIsSet(t *testing.T) {
	const before = 123
	defer debug.SetGCPercent(debug.SetGCPercent(before))
	percent := func() int { p := debug.SetGCPercent(-1); debug.SetGCPercent(p); return p }

	t.Setenv("GOGC", "")
	first, second := collectLess(), collectLess()
	if got := percent(); got != rebuildGCPercent {
		t.Fatalf("during two rebuilds the collector percent is %d, want %d", got, rebuildGCPercent)
	}
	first()
	first() // undoing twice counts once
	if got := percent(); got != rebuildGCPercent {
		t.Fatalf("with one rebuild still running the collector percent is %d, want %d", got, rebuildGCPercent)
	}
	second()
	if got := percent(); got != before {
		t.Fatalf("after the rebuilds the collector percent is %d, want %d as before", got, before)
	}

	t.Setenv("GOGC", "50")
	undo := collectLess()
	if got := percent(); got != before {
		t.Fatalf("with GOGC set a rebuild changed the collector percent to %d", got)
	}
	undo()
	if got := percent(); got != before {
		t.Fatalf("with GOGC set, after a rebuild the collector percent is %d", got)
	}
}
