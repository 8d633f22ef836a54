package projections

import (
	"bytes"
	"cmp"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

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

// randomTime is a zero time, or a time of the years 1 to 9999 in UTC or
// elsewhere, with or without a fraction of a second or a monotonic reading.
func randomTime(r *rand.Rand) time.Time {
	var t time.Time
	switch r.IntN(5) {
	case 0: // zero
	case 1:
		t = time.Now()
	case 2:
		t = time.Unix(r.Int64N(1<<34)-62135596800, 0)
	case 3:
		t = time.Unix(r.Int64N(1<<34)-62135596800, r.Int64N(1000)*1e6)
	default:
		t = time.Unix(r.Int64N(1<<34)-62135596800, r.Int64N(1e9))
	}
	if r.IntN(2) == 0 {
		return t.In(time.FixedZone("east", 5*3600+30*60))
	}
	return t.UTC()
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

// sameBucketBytes encodes every row of b as one bucket and compares it with
// what the JSON encoder writes of stored, the rows as the encoder wrote them.
func sameBucketBytes[K cmp.Ordered, R any](t *testing.T, b *buckets[K, R], stored func(K, R) any) {
	t.Helper()
	keys := make([]K, 0, len(b.rows))
	for k := range b.rows {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	rows := make([]any, len(keys))
	for i, k := range keys {
		rows[i] = stored(k, b.rows[k])
	}
	want, err := json.Marshal(rows)
	if err != nil {
		t.Fatal(err)
	}
	// Into a used buffer, as the rebuild does.
	got, err := b.encode([]byte("stale bytes"), keys)
	if err != nil {
		t.Fatal(err)
	}
	got = got[len("stale bytes"):]
	if !bytes.Equal(got, want) {
		i := 0
		for i < min(len(got), len(want)) && got[i] == want[i] {
			i++
		}
		t.Fatalf("%s: bucket differs at byte %d:\ngot  %s\nwant %s", b.view, i, got[i:min(len(got), i+200)], want[i:min(len(want), i+200)])
	}
}

func TestEncode_WritesTheSameBytesAsTheJSONEncoder(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))

	users := newUsersState(0).rows
	for i := range 3000 {
		id := domain.ContactID(r.Uint64N(1 << 40))
		if i < 10 {
			id = domain.ContactID(i) // the smallest ids, 0 too
		}
		u := &domain.User{UserID: randomString(r), ContactID: id, Login: randomString(r), Email: randomString(r),
			Role: domain.Role(randomString(r)), PasswordHash: "not written", CreatedAt: randomTime(r), UpdatedAt: randomTime(r)}
		switch n := r.IntN(12) - 2; {
		case n == -2: // nil meta
		case n == -1:
			u.Meta = map[string]string{}
		default:
			u.Meta = map[string]string{}
			for range n {
				u.Meta[randomString(r)] = randomString(r)
			}
		}
		switch n := r.IntN(6) - 2; {
		case n == -2: // nil tags
		case n == -1:
			u.Tags = []domain.Tag{}
		default:
			for range n {
				u.Tags = append(u.Tags, domain.Tag{ID: r.Uint64(), Name: randomString(r)})
			}
		}
		users.rows[id] = &userEntry{u: u, version: r.Uint64()}
	}
	sameBucketBytes(t, users, func(_ domain.ContactID, e *userEntry) any { return e.row() })

	tags := newTagsState(0).rows
	for i := range 300 {
		row := &tagRow{name: randomString(r), members: map[domain.ContactID]struct{}{}}
		for range r.IntN(50) {
			row.members[domain.ContactID(r.Uint64N(1<<40))] = struct{}{}
		}
		tags.rows[uint64(i)*r.Uint64N(1<<50)] = row
	}
	sameBucketBytes(t, tags, func(id uint64, t *tagRow) any {
		contacts := make([]domain.ContactID, 0, len(t.members))
		for c := range t.members {
			contacts = append(contacts, c)
		}
		slices.Sort(contacts)
		return storedTag{ID: id, Name: t.name, Contacts: contacts}
	})

	passwords := newPasswordsState(0).rows
	for range 3000 {
		id := domain.ContactID(r.Uint64N(1 << 40))
		passwords.rows[id] = &PasswordReturn{ContactID: id, KeyID: randomString(r), Field: randomString(r), Status: randomString(r),
			Attempts: r.IntN(1000) - 10, LastError: randomString(r), NextAttemptAt: randomTime(r), IssuedAt: randomTime(r), UpdatedAt: randomTime(r)}
	}
	sameBucketBytes(t, passwords, func(_ domain.ContactID, r *PasswordReturn) any { return storedReturn{PasswordReturn: *r, Key: r.KeyID} })

	webhooks := newWebhooksState(0).rows
	for range 3000 {
		id := randomString(r)
		webhooks.rows[id] = &Webhook{ID: id, Action: randomString(r), ContactID: domain.ContactID(r.Uint64()), Status: randomString(r),
			Message: randomString(r), Attempts: r.IntN(1000) - 10, ReceivedAt: randomTime(r), UpdatedAt: randomTime(r)}
	}
	// A receipt was written as the encoder writes an array of its fields.
	sameBucketBytes(t, webhooks, func(_ string, w *Webhook) any {
		return []any{w.ID, w.Action, w.ContactID, w.Status, w.Message, w.Attempts, unixNano(w.ReceivedAt), unixNano(w.UpdatedAt)}
	})
}

func TestEncode_TimeOutsideRFC3339IsAnError(t *testing.T) {
	users := newUsersState(0).rows
	users.rows[1] = &userEntry{u: &domain.User{ContactID: 1, CreatedAt: time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC)}}
	if _, err := json.Marshal(users.rows[1].row()); err == nil {
		t.Fatal("the JSON encoder wrote a year 10000")
	}
	if _, err := users.encode(nil, []domain.ContactID{1}); err == nil {
		t.Fatal("encode wrote a year 10000")
	}
}
