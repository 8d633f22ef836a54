package domain

import (
	"bytes"
	"errors"
	"fmt"
	"time"
	"unicode/utf8"

	json "github.com/goccy/go-json"
)

// SchemaVersion is the schema version this build writes for every event
// type, and the newest it can read.
const SchemaVersion = 1

// Envelope is an event with what every event carries: when it happened and
// the webhook that caused it (causation). Stored events also have a type and
// schema version in their metadata.
type Envelope struct {
	Event      Event
	OccurredAt time.Time
	// WebhookID is the webhook that caused the event; empty for events a
	// process caused on its own (a scheduled password return, say).
	WebhookID string
}

// Metadata is the JSON metadata stored beside every event's data.
type Metadata struct {
	Schema     int       `json:"schema"`
	OccurredAt time.Time `json:"occurred_at"`
	WebhookID  string    `json:"webhook_id,omitempty"`
}

// ErrUnknownEventType is matched by Decode's error for a type this build
// does not know.
var ErrUnknownEventType = errors.New("unknown event type")

// ErrUnsupportedSchema is matched by Decode's error for an event written by a
// newer schema version than this build reads.
var ErrUnsupportedSchema = errors.New("unsupported event schema version")

// Encode turns an envelope into the bytes the store keeps.
func Encode(e Envelope) (NewEvent, error) {
	if e.Event == nil {
		return NewEvent{}, errors.New("encode event: no event")
	}
	data, err := json.Marshal(e.Event)
	if err != nil {
		return NewEvent{}, fmt.Errorf("encode %s: %w", e.Event.EventType(), err)
	}
	meta, err := json.Marshal(Metadata{Schema: SchemaVersion, OccurredAt: e.OccurredAt.UTC(), WebhookID: e.WebhookID})
	if err != nil {
		return NewEvent{}, fmt.Errorf("encode %s metadata: %w", e.Event.EventType(), err)
	}
	return NewEvent{Type: e.Event.EventType(), Data: data, Metadata: meta}, nil
}

// EncodeAll encodes envelopes in order.
func EncodeAll(es []Envelope) ([]NewEvent, error) {
	out := make([]NewEvent, 0, len(es))
	for _, e := range es {
		n, err := Encode(e)
		if err != nil {
			return nil, err
		}
		out = append(out, n)
	}
	return out, nil
}

// Decode turns a stored event back into an envelope. An unknown type or a
// newer schema gives an error matching ErrUnknownEventType or
// ErrUnsupportedSchema: the caller parks the event rather than skip it.
func Decode(r RecordedEvent) (Envelope, error) { return decode(r, nil) }

// A Decoder decodes many events, sharing one string for each short value
// they repeat (actions, tag names, roles, field names), so that a rebuild
// allocates less and the views it builds hold one copy of each. Its zero
// value is not usable; a Decoder is not safe for concurrent use.
type Decoder struct{ words map[string]string }

// NewDecoder returns a Decoder.
func NewDecoder() *Decoder { return &Decoder{words: make(map[string]string, 256)} }

// Decode is Decode, sharing strings with the events decoded before.
func (d *Decoder) Decode(r RecordedEvent) (Envelope, error) { return decode(r, d.words) }

func decode(r RecordedEvent, words map[string]string) (Envelope, error) {
	ev, fast := decodeFast(r.Type, r.Data, words)
	m, ok := parseMetadata(r.Metadata, causedBy(ev))
	if !ok {
		if err := json.Unmarshal(r.Metadata, &m); err != nil {
			return Envelope{}, fmt.Errorf("decode metadata of %s event %d in %s: %w", r.Type, r.Version, r.Stream, err)
		}
	}
	if m.Schema > SchemaVersion {
		return Envelope{}, fmt.Errorf("decode %s event %d in %s: schema %d, this build reads up to %d (upgrade usersync): %w",
			r.Type, r.Version, r.Stream, m.Schema, SchemaVersion, ErrUnsupportedSchema)
	}
	if fast {
		return Envelope{Event: ev, OccurredAt: m.OccurredAt, WebhookID: m.WebhookID}, nil
	}
	ev = newEvent(r.Type)
	if ev == nil {
		return Envelope{}, fmt.Errorf("decode event %d in %s: type %q: %w", r.Version, r.Stream, r.Type, ErrUnknownEventType)
	}
	if err := json.Unmarshal(r.Data, ev); err != nil {
		return Envelope{}, fmt.Errorf("decode %s event %d in %s: %w", r.Type, r.Version, r.Stream, err)
	}
	return Envelope{Event: deref(ev), OccurredAt: m.OccurredAt, WebhookID: m.WebhookID}, nil
}

// causedBy is the webhook id an event's data names, which its metadata
// usually repeats.
func causedBy(e Event) string {
	switch e := e.(type) {
	case WebhookReceived:
		return e.WebhookID
	case WebhookProcessed:
		return e.WebhookID
	}
	return ""
}

// newEvent returns a pointer to a zero event of the named type, or nil.
func newEvent(typ string) Event {
	switch typ {
	case TypeWebhookReceived:
		return &WebhookReceived{}
	case TypeWebhookProcessed:
		return &WebhookProcessed{}
	case TypeWebhookIgnored:
		return &WebhookIgnored{}
	case TypeWebhookFailed:
		return &WebhookFailed{}
	case TypeWebhookRetrying:
		return &WebhookRetrying{}
	case TypeUserCreated:
		return &UserCreated{}
	case TypeUserLinked:
		return &UserLinked{}
	case TypeUserUnlinked:
		return &UserUnlinked{}
	case TypeMetaPulled:
		return &MetaPulled{}
	case TypeTagsUpdated:
		return &TagsUpdated{}
	case TypeRoleChanged:
		return &RoleChanged{}
	case TypePasswordIssued:
		return &PasswordIssued{}
	case TypePasswordReturned:
		return &PasswordReturned{}
	case TypePasswordReturnFailed:
		return &PasswordReturnFailed{}
	case TypeWelcomeEmailSent:
		return &WelcomeEmailSent{}
	case TypeWelcomeEmailFailed:
		return &WelcomeEmailFailed{}
	case TypeEmailReserved:
		return &EmailReserved{}
	case TypeEmailReleased:
		return &EmailReleased{}
	case TypeLoginReserved:
		return &LoginReserved{}
	case TypePasswordReturnClaimed:
		return &PasswordReturnClaimed{}
	case TypePasswordReplaced:
		return &PasswordReplaced{}
	case TypeWelcomeEmailClaimed:
		return &WelcomeEmailClaimed{}
	case TypeOperatorActed:
		return &OperatorActed{}
	}
	return nil
}

// deref turns the pointer newEvent made back into the value type, so that
// callers switch on value types only.
func deref(e Event) Event {
	switch v := e.(type) {
	case *WebhookReceived:
		return *v
	case *WebhookProcessed:
		return *v
	case *WebhookIgnored:
		return *v
	case *WebhookFailed:
		return *v
	case *WebhookRetrying:
		return *v
	case *UserCreated:
		return *v
	case *UserLinked:
		return *v
	case *UserUnlinked:
		return *v
	case *MetaPulled:
		return *v
	case *TagsUpdated:
		return *v
	case *RoleChanged:
		return *v
	case *PasswordIssued:
		return *v
	case *PasswordReturned:
		return *v
	case *PasswordReturnFailed:
		return *v
	case *WelcomeEmailSent:
		return *v
	case *WelcomeEmailFailed:
		return *v
	case *EmailReserved:
		return *v
	case *EmailReleased:
		return *v
	case *LoginReserved:
		return *v
	case *PasswordReturnClaimed:
		return *v
	case *PasswordReplaced:
		return *v
	case *WelcomeEmailClaimed:
		return *v
	case *OperatorActed:
		return *v
	}
	return e
}

// plainString reports whether b, the inside of a JSON string, holds no
// escape, quote or control character and is valid UTF-8: the JSON decoder
// then reads it as these very bytes.
func plainString(b []byte) bool {
	for _, c := range b {
		if c < 0x20 || c == '\\' || c == '"' {
			return false
		}
	}
	return utf8.Valid(b)
}

// parseMetadata reads metadata in the exact form Encode writes it, without
// reflection: it is half the cost of decoding an event, and a rebuild
// decodes every event. Anything else (escapes, other order, other fields)
// reports !ok and goes to the JSON decoder. A webhook id equal to known is
// returned as known rather than as a new string.
func parseMetadata(b []byte, known string) (Metadata, bool) {
	var m Metadata
	rest, ok := bytes.CutPrefix(b, []byte(`{"schema":`))
	if !ok {
		return m, false
	}
	i := 0
	for i < len(rest) && rest[i] >= '0' && rest[i] <= '9' && i < 6 {
		m.Schema = m.Schema*10 + int(rest[i]-'0')
		i++
	}
	if i == 0 || i > 1 && rest[0] == '0' { // leading zeros are not JSON
		return m, false
	}
	if rest, ok = bytes.CutPrefix(rest[i:], []byte(`,"occurred_at":"`)); !ok {
		return m, false
	}
	end := bytes.IndexByte(rest, '"')
	if end < 0 || bytes.IndexByte(rest[:end], '\\') >= 0 {
		return m, false
	}
	t, ok := parseUTC(rest[:end])
	if !ok {
		var err error
		if t, err = time.Parse(time.RFC3339Nano, string(rest[:end])); err != nil {
			return m, false
		}
	}
	m.OccurredAt = t
	rest = rest[end+1:]
	if bytes.Equal(rest, []byte("}")) {
		return m, true
	}
	if rest, ok = bytes.CutPrefix(rest, []byte(`,"webhook_id":"`)); !ok {
		return m, false
	}
	id, ok := bytes.CutSuffix(rest, []byte(`"}`))
	if !ok || !plainString(id) {
		return m, false
	}
	if string(id) == known {
		m.WebhookID = known
	} else {
		m.WebhookID = string(id)
	}
	return m, true
}
