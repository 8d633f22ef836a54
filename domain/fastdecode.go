package domain

import (
	"bytes"
	"math"
	"time"
	"unicode/utf8"
)

// decodeFast decodes the data of the event types a webhook appends most
// (receipt, outcome, user, tags, meta) when it is in the exact form Encode
// writes: fields in declaration order, no spaces, no escapes in strings,
// valid UTF-8. It reports !ok for anything else, and Decode then uses the
// JSON decoder, so its result never depends on which path ran. A rebuild
// decodes every event, and the JSON decoder's reflection was its largest
// cost.
func decodeFast(typ string, data []byte, words map[string]string) (Event, bool) {
	s := scanner{b: data, ok: true, words: words}
	var ev Event
	switch typ {
	case TypeWebhookReceived:
		var e WebhookReceived
		s.lit(`{"webhook_id":`)
		e.WebhookID = s.str()
		s.lit(`,"action":`)
		e.Action = s.word()
		s.lit(`,"contact_id":`)
		e.ContactID = s.str()
		s.lit(`,"params":`)
		e.Params = s.strMap()
		s.lit(`,"method":`)
		e.Method = s.word()
		s.lit(`,"source":`)
		e.Source = s.word()
		s.lit(`,"received_at":`)
		e.ReceivedAt = s.time()
		ev = e
	case TypeWebhookProcessed:
		var e WebhookProcessed
		s.lit(`{"webhook_id":`)
		e.WebhookID = s.str()
		s.lit(`,"action":`)
		e.Action = s.word()
		s.lit(`,"message":`)
		e.Message = s.word()
		s.lit(`,"user_id":`)
		e.UserID = s.str()
		s.lit(`,"changed":`)
		e.Changed = s.strs()
		ev = e
	case TypeTagsUpdated:
		var e TagsUpdated
		s.lit(`{"tags":`)
		e.Tags = s.tags()
		s.lit(`,"added":`)
		e.Added = s.tags()
		s.lit(`,"removed":`)
		e.Removed = s.tags()
		ev = e
	case TypeUserCreated:
		var e UserCreated
		s.lit(`{"user_id":`)
		e.UserID = s.str()
		s.lit(`,"contact_id":`)
		e.ContactID = ContactID(s.uint())
		s.lit(`,"login":`)
		e.Login = s.str()
		s.lit(`,"email":`)
		e.Email = s.str()
		s.lit(`,"role":`)
		e.Role = Role(s.word())
		s.lit(`,"password_hash":`)
		e.PasswordHash = s.str()
		s.lit(`,"welcome_email":`)
		e.WelcomeEmail = s.bool()
		ev = e
	case TypeMetaPulled:
		var e MetaPulled
		s.lit(`{"changes":`)
		e.Changes = s.metaChanges()
		ev = e
	default:
		return nil, false
	}
	s.lit("}")
	if !s.ok || len(s.b) != 0 {
		return nil, false
	}
	return ev, true
}

// scanner reads JSON in the one form Encode writes. Once a read fails, ok
// is false and every later read returns a zero value.
type scanner struct {
	b  []byte
	ok bool
	// words are the strings already decoded, by value; nil shares none.
	words map[string]string
}

func (s *scanner) fail() { s.ok, s.b = false, nil }

// lit consumes p.
func (s *scanner) lit(p string) {
	if len(s.b) < len(p) || string(s.b[:len(p)]) != p {
		s.fail()
		return
	}
	s.b = s.b[len(p):]
}

// null consumes null if it comes next.
func (s *scanner) null() bool {
	if bytes.HasPrefix(s.b, []byte("null")) {
		s.b = s.b[4:]
		return true
	}
	return false
}

// raw consumes a string without escapes or control characters and returns
// its bytes; anything else fails, for the JSON decoder to handle.
func (s *scanner) raw() []byte {
	if len(s.b) == 0 || s.b[0] != '"' {
		s.fail()
		return nil
	}
	ascii := true
	for i := 1; i < len(s.b); i++ {
		switch c := s.b[i]; {
		case c == '"':
			v := s.b[1:i]
			if !ascii && !utf8.Valid(v) {
				s.fail()
				return nil
			}
			s.b = s.b[i+1:]
			return v
		case c == '\\' || c < 0x20:
			s.fail()
			return nil
		case c >= utf8.RuneSelf:
			ascii = false
		}
	}
	s.fail()
	return nil
}

// str consumes a string and returns it as a new string.
func (s *scanner) str() string {
	v := s.raw()
	if len(v) == 0 {
		return ""
	}
	return string(v)
}

// word consumes a string that many events repeat (an action, a tag name, a
// role) and returns the string the decoder already holds for it, if any:
// allocating a string per field was most of the cost of decoding.
func (s *scanner) word() string {
	v := s.raw()
	if len(v) == 0 {
		return ""
	}
	if s.words == nil || len(v) > maxWordLen {
		return string(v)
	}
	if w, ok := s.words[string(v)]; ok {
		return w
	}
	w := string(v)
	if len(s.words) < maxWords {
		s.words[w] = w
	}
	return w
}

// A Decoder shares at most maxWords words of up to maxWordLen bytes.
const (
	maxWords   = 4096
	maxWordLen = 40
)

// uint consumes an unsigned integer that fits in a uint64.
func (s *scanner) uint() uint64 {
	i := 0
	var n uint64
	for ; i < len(s.b) && s.b[i] >= '0' && s.b[i] <= '9'; i++ {
		d := uint64(s.b[i] - '0')
		if n > (math.MaxUint64-d)/10 {
			s.fail()
			return 0
		}
		n = n*10 + d
	}
	// Leading zeros are not JSON.
	if i == 0 || (i > 1 && s.b[0] == '0') {
		s.fail()
		return 0
	}
	s.b = s.b[i:]
	return n
}

func (s *scanner) bool() bool {
	switch {
	case bytes.HasPrefix(s.b, []byte("true")):
		s.b = s.b[4:]
		return true
	case bytes.HasPrefix(s.b, []byte("false")):
		s.b = s.b[5:]
		return false
	}
	s.fail()
	return false
}

// time reads a time as time.Time's JSON form.
func (s *scanner) time() time.Time {
	v := s.raw()
	if t, ok := parseUTC(v); ok {
		return t
	}
	var t time.Time
	if !s.ok || t.UnmarshalText(v) != nil {
		s.fail()
		return time.Time{}
	}
	return t
}

// parseUTC reads a UTC time in the form time.Time's JSON encoding writes,
// 2006-01-02T15:04:05.999999999Z, a few times faster than time.Parse. Any
// other form (an offset, a date out of range) reports !ok for time.Parse to
// handle.
func parseUTC(b []byte) (time.Time, bool) {
	if len(b) < len("2006-01-02T15:04:05Z") || b[4] != '-' || b[7] != '-' || b[10] != 'T' || b[13] != ':' || b[16] != ':' || b[len(b)-1] != 'Z' {
		return time.Time{}, false
	}
	num := func(p []byte) int {
		n := 0
		for _, c := range p {
			if c < '0' || c > '9' {
				return -1
			}
			n = n*10 + int(c-'0')
		}
		return n
	}
	year, month, day := num(b[0:4]), num(b[5:7]), num(b[8:10])
	hour, minute, sec := num(b[11:13]), num(b[14:16]), num(b[17:19])
	nsec := 0
	if frac := b[19 : len(b)-1]; len(frac) > 0 {
		if len(frac) < 2 || len(frac) > 10 || frac[0] != '.' {
			return time.Time{}, false
		}
		if nsec = num(frac[1:]); nsec < 0 {
			return time.Time{}, false
		}
		for range 10 - len(frac) {
			nsec *= 10
		}
	}
	if year < 0 || month < 1 || month > 12 || day < 1 || day > 28 && day > daysIn(month, year) ||
		hour < 0 || hour > 23 || minute < 0 || minute > 59 || sec < 0 || sec > 59 {
		return time.Time{}, false
	}
	return time.Date(year, time.Month(month), day, hour, minute, sec, nsec, time.UTC), true
}

func daysIn(month, year int) int {
	return time.Date(year, time.Month(month)+1, 0, 0, 0, 0, 0, time.UTC).Day()
}

// open consumes the start of an array: present is false for null, empty
// true for [].
func (s *scanner) open() (present, empty bool) {
	if s.null() {
		return false, false
	}
	s.lit("[")
	if len(s.b) > 0 && s.b[0] == ']' {
		s.b = s.b[1:]
		return true, true
	}
	return s.ok, false
}

// next consumes the separator after an element: true if another follows,
// false at the end of the array.
func (s *scanner) next() bool {
	if len(s.b) > 0 && s.b[0] == ',' {
		s.b = s.b[1:]
		return s.ok
	}
	s.lit("]")
	return false
}

// The lists below collect elements in a buffer on the stack and allocate
// their result once, at its final length.

func (s *scanner) strs() []string {
	present, empty := s.open()
	if !present || empty {
		return emptyOrNil[string](present)
	}
	var buf [8]string
	out := buf[:0]
	for more := true; more; more = s.next() {
		out = append(out, s.word())
	}
	return exact(out)
}

func (s *scanner) tags() []Tag {
	present, empty := s.open()
	if !present || empty {
		return emptyOrNil[Tag](present)
	}
	var buf [8]Tag
	out := buf[:0]
	for more := true; more; more = s.next() {
		var t Tag
		s.lit(`{"id":`)
		t.ID = s.uint()
		s.lit(`,"name":`)
		t.Name = s.word()
		s.lit("}")
		out = append(out, t)
	}
	return exact(out)
}

func (s *scanner) metaChanges() []MetaChange {
	present, empty := s.open()
	if !present || empty {
		return emptyOrNil[MetaChange](present)
	}
	var buf [8]MetaChange
	out := buf[:0]
	for more := true; more; more = s.next() {
		var c MetaChange
		s.lit(`{"key":`)
		c.Key = s.word()
		s.lit(`,"old":`)
		c.Old = s.str()
		s.lit(`,"new":`)
		c.New = s.str()
		s.lit("}")
		out = append(out, c)
	}
	return exact(out)
}

// emptyOrNil is what the JSON decoder gives for [] (present) and null.
func emptyOrNil[T any](present bool) []T {
	if present {
		return []T{}
	}
	return nil
}

func exact[T any](v []T) []T {
	out := make([]T, len(v))
	copy(out, v)
	return out
}

// strMap consumes null or an object of strings.
func (s *scanner) strMap() map[string]string {
	if s.null() {
		return nil
	}
	s.lit("{")
	m := map[string]string{}
	if len(s.b) > 0 && s.b[0] == '}' {
		s.b = s.b[1:]
		return m
	}
	for s.ok {
		k := s.word()
		s.lit(":")
		m[k] = s.word()
		if len(s.b) > 0 && s.b[0] == ',' {
			s.b = s.b[1:]
			continue
		}
		s.lit("}")
		break
	}
	return m
}
