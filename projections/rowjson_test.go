package projections

import (
	"bytes"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	json "github.com/goccy/go-json"

	"github.com/usersync/usersync/domain"
)

// The views were written with the JSON encoder before the rows were written
// by hand; these tests hold the hand-written rows to the encoder's bytes, so
// that existing files read the same and a rebuild writes what it wrote.

// awkward are strings the JSON encoder escapes, or does not, in every way.
var awkward = []string{
	"", "plain", "Ann", "c1@example.com", `say "hi"`, `back\slash`, "<b>&amp;</b>",
	"\x00\x01\x07\x08\x09\x0a\x0b\x0c\x0d\x1b\x1f\x20\x7f", "línea\nnueva\ttab",
	"é", "日本語", "\U0001F600", "\u2028", "x\u2029y", "\ufffd", "\xff", "a\xc3", "\xc3(", "\xed\xa0\x80",
	"\xf4\x90\x80\x80", "\xe2\x80", "tags: no FunnelKit tag is named \"Nope\" \\ <b>&",
}

// randomString mixes awkward strings, random bytes and random runes.
func randomString(r *rand.Rand) string {
	var sb strings.Builder
	for range r.IntN(5) {
		switch r.IntN(4) {
		case 0:
			sb.WriteString(awkward[r.IntN(len(awkward))])
		case 1:
			sb.WriteByte(byte(r.IntN(256)))
		case 2:
			sb.WriteRune(rune(r.IntN(0x11000)))
		default:
			sb.WriteString("abc123")
		}
	}
	return sb.String()
}

func TestAppendJSONString_WritesWhatTheEncoderWrites(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	strs := slices.Clone(awkward)
	for range 20000 {
		strs = append(strs, randomString(r))
	}
	for b := range 256 {
		strs = append(strs, string([]byte{byte(b)}), "x"+string([]byte{byte(b)})+"y")
	}
	for _, s := range strs {
		want, err := json.Marshal(s)
		if err != nil {
			t.Fatal(err)
		}
		if got := appendJSONString([]byte("prefix"), s); !bytes.Equal(got, append([]byte("prefix"), want...)) {
			t.Fatalf("%q:\ngot  %s\nwant prefix%s", s, got, want)
		}
	}
}

func TestAppendJSONStringsAndTags_WriteWhatTheEncoderWrites(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	for range 3000 {
		var m map[string]string
		if n := r.IntN(12) - 1; n >= 0 {
			m = map[string]string{}
			for range n {
				m[randomString(r)] = randomString(r)
			}
		}
		want, err := json.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		if got := appendJSONStrings(nil, m); !bytes.Equal(got, want) {
			t.Fatalf("meta %q:\ngot  %s\nwant %s", m, got, want)
		}
		tags := []domain.Tag{}
		for range r.IntN(5) {
			tags = append(tags, domain.Tag{ID: r.Uint64(), Name: randomString(r)})
		}
		if want, err = json.Marshal(tags); err != nil {
			t.Fatal(err)
		}
		if got := appendTags(nil, tags); !bytes.Equal(got, want) {
			t.Fatalf("tags %v:\ngot  %s\nwant %s", tags, got, want)
		}
	}
}
