package domain

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"reflect"
	"strings"
	"testing"
	"time"
	"unsafe"

	json "github.com/goccy/go-json"
)

// decodeJSON is the reference decodeFast must agree with: the JSON decoder
// Decode falls back to.
func decodeJSON(typ string, data []byte) (Event, error) {
	ev := newEvent(typ)
	if ev == nil {
		return nil, fmt.Errorf("type %q: %w", typ, ErrUnknownEventType)
	}
	if err := json.Unmarshal(data, ev); err != nil {
		return nil, err
	}
	return deref(ev), nil
}

// checkFast fails the test if decodeFast, with or without shared words,
// accepts data and decodes it differently from the JSON decoder. It reports
// whether the fast path accepted it.
func checkFast(t testing.TB, typ string, data []byte) bool {
	t.Helper()
	want, err := decodeJSON(typ, data)
	words := map[string]string{}
	accepted := false
	for _, w := range []map[string]string{nil, words, words} {
		got, ok := decodeFast(typ, data, w)
		if !ok {
			if accepted {
				t.Fatalf("%s %s: accepted once, then refused", typ, data)
			}
			continue
		}
		accepted = true
		if err != nil {
			t.Fatalf("%s %s: the fast path accepted what the JSON decoder refuses (%v): %#v", typ, data, err, got)
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("%s %s:\nfast %#v\njson %#v", typ, data, got, want)
		}
	}
	return accepted
}

func hotEvents() []Event {
	at := time.Date(2026, 1, 5, 8, 0, 0, 123456789, time.UTC)
	plus1 := time.Date(2026, 1, 5, 9, 0, 0, 0, time.FixedZone("", 3600))
	tags := []Tag{{ID: 5, Name: "VIP"}, {ID: 18446744073709551615, Name: "Trial ü"}}
	return []Event{
		WebhookReceived{WebhookID: "01JH3Z8X6W2T5Q9R4V7K1M0N8P", Action: "add", ContactID: "12",
			Params: map[string]string{"send_notification": "true", "role": "customer"}, Method: "POST", Source: "203.0.113.7", ReceivedAt: at},
		WebhookReceived{WebhookID: "w", Action: "update_tags", ContactID: "", Params: map[string]string{}, Method: "GET", ReceivedAt: plus1},
		WebhookReceived{WebhookID: "w", Params: nil},
		WebhookReceived{WebhookID: "w", ContactID: "a<b>&c", Params: map[string]string{"q": `"quoted" \ back`}},
		WebhookReceived{WebhookID: "w", Action: "bad\xffutf8", Params: map[string]string{"k\u2028": "\x01"}},
		WebhookProcessed{WebhookID: "w", Action: "add", Message: "User created", UserID: "u", Changed: []string{"UserCreated", "TagsUpdated"}},
		WebhookProcessed{WebhookID: "w", Changed: []string{}},
		WebhookProcessed{WebhookID: "w", Changed: nil, Message: "Grüße, 世界"},
		TagsUpdated{Tags: tags, Added: tags[1:], Removed: []Tag{{ID: 9, Name: "Gold"}}},
		TagsUpdated{Tags: []Tag{}, Added: nil, Removed: []Tag{{ID: 0, Name: ""}}},
		TagsUpdated{Tags: []Tag{{ID: 1, Name: "a\"b"}}},
		UserCreated{UserID: "3f1c", ContactID: 12, Login: "ann@example.com", Email: "ann@example.com", Role: "customer",
			PasswordHash: "$2a$10$7EqJtq98hPqEX7fNZaFWoOhi5BWX4Z5YZ0Zcyb0e5lCq/9Dw6bF1K", WelcomeEmail: true},
		UserCreated{ContactID: 18446744073709551615},
		UserCreated{Login: "a&b"},
		MetaPulled{Changes: []MetaChange{{Key: "first_name", Old: "", New: "Ann"}, {Key: "user_email", Old: "a@x", New: "b@x"}}},
		MetaPulled{Changes: []MetaChange{}},
		MetaPulled{},
		MetaPulled{Changes: []MetaChange{{Key: "k", New: "line\nbreak"}}},
	}
}

func TestDecodeFast_AgreesWithJSONDecoderOnEncodedEvents(t *testing.T) {
	fast := 0
	for _, e := range hotEvents() {
		ne, err := Encode(Envelope{Event: e})
		if err != nil {
			t.Fatal(err)
		}
		plain := !bytes.ContainsRune(ne.Data, '\\')
		if got := checkFast(t, ne.Type, ne.Data); got != plain {
			t.Errorf("%s: fast path taken = %v, want %v (it takes every encoding without escapes)", ne.Data, got, plain)
		} else if got {
			fast++
		}
	}
	if fast < 12 {
		t.Fatalf("fast path taken for %d events, want at least 12", fast)
	}
}

func TestDecodeFast_AgreesWithJSONDecoderOnRandomEvents(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	alphabet := []string{"a", "Z", "0", " ", "é", "世", "<", "&", "\"", "\\", "\n", "\x00", "\xff", "\u2028", "/", "{", "}", "[", "]", ",", ":"}
	str := func() string {
		var b strings.Builder
		for range r.IntN(6) {
			b.WriteString(alphabet[r.IntN(len(alphabet))])
		}
		return b.String()
	}
	tagList := func() []Tag {
		switch r.IntN(4) {
		case 0:
			return nil
		case 1:
			return []Tag{}
		}
		out := make([]Tag, 1+r.IntN(3))
		for i := range out {
			out[i] = Tag{ID: r.Uint64() >> r.IntN(64), Name: str()}
		}
		return out
	}
	fast := 0
	for i := range 3000 {
		var e Event
		switch i % 5 {
		case 0:
			params := map[string]string{}
			for range r.IntN(3) {
				params[str()] = str()
			}
			if r.IntN(5) == 0 {
				params = nil
			}
			e = WebhookReceived{WebhookID: str(), Action: str(), ContactID: str(), Params: params, Method: str(), Source: str(),
				ReceivedAt: time.Unix(r.Int64N(1<<35), r.Int64N(1e9)).In(time.FixedZone("", 60*(r.IntN(25*60)-12*60)))}
		case 1:
			var changed []string
			for range r.IntN(3) {
				changed = append(changed, str())
			}
			e = WebhookProcessed{WebhookID: str(), Action: str(), Message: str(), UserID: str(), Changed: changed}
		case 2:
			e = TagsUpdated{Tags: tagList(), Added: tagList(), Removed: tagList()}
		case 3:
			e = UserCreated{UserID: str(), ContactID: ContactID(r.Uint64() >> r.IntN(64)), Login: str(), Email: str(), Role: Role(str()), PasswordHash: str(), WelcomeEmail: r.IntN(2) == 0}
		case 4:
			var changes []MetaChange
			for range r.IntN(3) {
				changes = append(changes, MetaChange{Key: str(), Old: str(), New: str()})
			}
			e = MetaPulled{Changes: changes}
		}
		ne, err := Encode(Envelope{Event: e})
		if err != nil {
			t.Fatal(err)
		}
		if checkFast(t, ne.Type, ne.Data) {
			fast++
		}
	}
	if fast < 300 {
		t.Fatalf("fast path taken for %d of 3000 random events, want at least 300", fast)
	}
}

// Input in another form than Encode's (spaces, other order, other case,
// unknown fields, nulls, cut short) is either refused by the fast path or
// decoded exactly as the JSON decoder does.
func TestDecodeFast_OtherFormsAreRefusedOrAgree(t *testing.T) {
	edits := []func(string) string{
		func(s string) string { return strings.Replace(s, ":", ": ", 1) },
		func(s string) string { return strings.Replace(s, "{", "{ ", 1) },
		func(s string) string { return s + " " },
		func(s string) string { return strings.Replace(s, `"webhook_id"`, `"WEBHOOK_ID"`, 1) },
		func(s string) string { return strings.Replace(s, "{", `{"extra":1,`, 1) },
		func(s string) string { return strings.Replace(s, `[]`, `null`, 1) },
		func(s string) string { return strings.Replace(s, `null`, `[]`, 1) },
		func(s string) string { return strings.Replace(s, `"id":5`, `"id":05`, 1) },
		func(s string) string { return strings.Replace(s, `"id":5`, `"id":-5`, 1) },
		func(s string) string { return strings.Replace(s, `"id":5`, `"id":5.0`, 1) },
		func(s string) string {
			return strings.Replace(s, `"contact_id":12`, `"contact_id":184467440737095516150`, 1)
		},
		func(s string) string { return strings.Replace(s, `true`, `"true"`, 1) },
		func(s string) string {
			return strings.Replace(s, `"send_notification":"true"`, `"send_notification":"true","send_notification":"0"`, 1)
		},
		func(s string) string {
			return strings.Replace(s, `"2026-01-05T08:00:00.123456789Z"`, `"2026-01-05 08:00:00Z"`, 1)
		},
		func(s string) string {
			return strings.Replace(s, `"2026-01-05T08:00:00.123456789Z"`, `"2026-01-05T08:00:00.123456789+00:00"`, 1)
		},
		func(s string) string { return strings.Replace(s, `,"removed":`, `,"removed":[],"removed":`, 1) },
	}
	for _, e := range hotEvents() {
		ne, err := Encode(Envelope{Event: e})
		if err != nil {
			t.Fatal(err)
		}
		for _, edit := range edits {
			checkFast(t, ne.Type, []byte(edit(string(ne.Data))))
		}
		for i := range ne.Data {
			checkFast(t, ne.Type, ne.Data[:i])
		}
	}
}

func FuzzDecodeFast(f *testing.F) {
	for _, e := range hotEvents() {
		ne, err := Encode(Envelope{Event: e})
		if err != nil {
			f.Fatal(err)
		}
		f.Add(ne.Type, ne.Data)
	}
	f.Fuzz(func(t *testing.T, typ string, data []byte) { checkFast(t, typ, data) })
}

func TestDecoder_SharesRepeatedWords(t *testing.T) {
	d := NewDecoder()
	var tags []Tag
	for i := range 2 {
		ne, err := Encode(Envelope{Event: TagsUpdated{Tags: []Tag{{ID: 5, Name: "VIP"}}}, OccurredAt: time.Unix(int64(i), 0)})
		if err != nil {
			t.Fatal(err)
		}
		env, err := d.Decode(RecordedEvent{Type: ne.Type, Data: ne.Data, Metadata: ne.Metadata})
		if err != nil {
			t.Fatal(err)
		}
		tags = append(tags, env.Event.(TagsUpdated).Tags...)
	}
	if tags[0].Name != "VIP" || tags[1].Name != "VIP" {
		t.Fatalf("decoded %v", tags)
	}
	if unsafe.StringData(tags[0].Name) != unsafe.StringData(tags[1].Name) {
		t.Fatal("the tag name decoded twice is two strings, want one shared")
	}
}

// parseUTC agrees with time.Parse wherever it accepts a time, and accepts
// every UTC time time.Time's JSON encoding writes.
func TestParseUTC_AgreesWithTimeParse(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	check := func(s string, mustAccept bool) {
		t.Helper()
		got, ok := parseUTC([]byte(s))
		want, err := time.Parse(time.RFC3339Nano, s)
		switch {
		case ok && err != nil:
			t.Fatalf("%q: parseUTC accepted what time.Parse refuses: %v", s, err)
		case ok && !reflect.DeepEqual(got, want):
			t.Fatalf("%q: parseUTC %#v, time.Parse %#v", s, got, want)
		case !ok && mustAccept:
			t.Fatalf("%q: parseUTC refused a time as JSON writes it", s)
		}
	}
	for range 20000 {
		at := time.Unix(r.Int64N(1<<37)-1<<36, r.Int64N(1e9)).UTC()
		if r.IntN(3) == 0 {
			at = at.Truncate(time.Second)
		}
		text, err := at.MarshalText()
		if err != nil {
			continue // years outside 0..9999
		}
		check(string(text), true)
	}
	for _, s := range []string{
		"2026-02-29T00:00:00Z", "2024-02-29T00:00:00Z", "2026-04-31T00:00:00Z", "2026-13-01T00:00:00Z", "2026-00-01T00:00:00Z",
		"2026-01-01T24:00:00Z", "2026-01-01T00:60:00Z", "2026-01-01T00:00:60Z", "2026-01-01T00:00:00.Z", "2026-01-01T00:00:00.1234567891Z",
		"2026-01-01T00:00:00.5Z", "2026-01-01T00:00:00,5Z", "2026-01-01T00:00:00+01:00", "2026-01-01 00:00:00Z", "+026-01-01T00:00:00Z",
		"2026-1-01T00:00:00Z", "2026-01-01T00:00:0aZ", "0000-01-01T00:00:00Z", "2026-01-01T00:00:00z", "",
	} {
		check(s, false)
	}
}

// parseMetadata accepts only what the JSON decoder reads the same way.
func TestParseMetadata_RefusedOrAgreesWithJSONDecoder(t *testing.T) {
	for _, in := range []string{
		`{"schema":1,"occurred_at":"2026-01-05T08:00:00Z","webhook_id":"w-1"}`,
		`{"schema":1,"occurred_at":"2026-01-05T08:00:00.5Z"}`,
		`{"schema":01,"occurred_at":"2026-01-05T08:00:00Z"}`,
		`{"schema":10,"occurred_at":"2026-01-05T08:00:00+02:00","webhook_id":"w"}`,
		"{\"schema\":1,\"occurred_at\":\"2026-01-05T08:00:00Z\",\"webhook_id\":\"w\x01\"}",
		"{\"schema\":1,\"occurred_at\":\"2026-01-05T08:00:00Z\",\"webhook_id\":\"w\xff\"}",
		`{"schema":1,"occurred_at":"2026-01-05T08:00:00Z","webhook_id":"w\"x"}`,
		`{"schema":1,"occurred_at":"2026-01-05T08:00:00Z","webhook_id":"w\u0041"}`,
		`{"schema":1,"occurred_at":"2026-01-05T08:00:00Z","webhook_id":"wé"}`,
		`{"schema":1,"occurred_at":"2026-13-05T08:00:00Z"}`,
	} {
		got, ok := parseMetadata([]byte(in), "")
		if !ok {
			continue
		}
		var want Metadata
		if err := json.Unmarshal([]byte(in), &want); err != nil {
			t.Errorf("%q: parsed as %+v, the JSON decoder refuses it: %v", in, got, err)
			continue
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%q: parsed as %+v, the JSON decoder reads %+v", in, got, want)
		}
	}
}
