package esdb

import (
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"

	kdb "github.com/EventStore/EventStore-Client-Go/v4/esdb"
	"github.com/google/uuid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/usersync/usersync/domain"
	"github.com/usersync/usersync/eventstore"
)

func TestVersionMapping_RevisionIsVersionMinusOne(t *testing.T) {
	for _, v := range []uint64{1, 2, 3, 1000, 1 << 40} {
		if got := versionOf(revisionOf(v)); got != v {
			t.Errorf("versionOf(revisionOf(%d)) = %d", v, got)
		}
		if got := revisionOf(v); got != v-1 {
			t.Errorf("revisionOf(%d) = %d, want %d", v, got, v-1)
		}
	}
	if versionOf(0) != 1 {
		t.Errorf("revision 0 is version %d, want 1", versionOf(0))
	}
}

func TestExpectedRevision_ZeroIsNoStreamElseTheRevision(t *testing.T) {
	if _, ok := expectedRevision(0).(kdb.NoStream); !ok {
		t.Errorf("expectedRevision(0) = %#v, want NoStream", expectedRevision(0))
	}
	if got := expectedRevision(5); got != kdb.Revision(4) {
		t.Errorf("expectedRevision(5) = %#v, want revision 4", got)
	}
}

func TestEventID_StableAndDistinct(t *testing.T) {
	e := domain.NewEvent{Type: "WebhookReceived", Data: []byte(`{"a":1}`), Metadata: []byte(`{"m":1}`)}
	base := EventID("contact-7", 3, e)
	if again := EventID("contact-7", 3, e); again != base {
		t.Fatalf("EventID not stable: %s then %s", base, again)
	}
	if base.Version() != 5 {
		t.Errorf("EventID is a v%d UUID, want v5", base.Version())
	}
	variants := map[string]idInput{
		"other stream":   {"contact-8", 3, e},
		"other version":  {"contact-7", 4, e},
		"other type":     {"contact-7", 3, domain.NewEvent{Type: "WebhookFailed", Data: e.Data, Metadata: e.Metadata}},
		"other data":     {"contact-7", 3, domain.NewEvent{Type: e.Type, Data: []byte(`{"a":2}`), Metadata: e.Metadata}},
		"other metadata": {"contact-7", 3, domain.NewEvent{Type: e.Type, Data: e.Data, Metadata: []byte(`{"m":2}`)}},
		// Length prefixes: moving bytes between fields changes the id.
		"data moved to metadata": {"contact-7", 3, domain.NewEvent{Type: e.Type, Data: nil, Metadata: append(append([]byte(nil), e.Data...), e.Metadata...)}},
	}
	seen := map[string]string{base.String(): "base"}
	for name, v := range variants {
		id := EventID(v.stream, v.version, v.e).String()
		if other, dup := seen[id]; dup {
			t.Errorf("%s has the same id as %s", name, other)
		}
		seen[id] = name
	}
}

type idInput struct {
	stream  string
	version uint64
	e       domain.NewEvent
}

func TestToEventData_IdsFollowTheVersions(t *testing.T) {
	s := &Store{opts: Options{}.withDefaults()}
	s.ns = uuid.MustParse(idNamespace)
	evs := []domain.NewEvent{{Type: "E", Data: []byte(`{}`)}, {Type: "E", Data: []byte(`{}`)}}
	data := s.toEventData("contact-1", 4, evs)
	if data[0].EventID == data[1].EventID {
		t.Fatal("two equal events of one append got the same id")
	}
	if data[0].EventID != EventID("contact-1", 5, evs[0]) || data[1].EventID != EventID("contact-1", 6, evs[1]) {
		t.Fatal("the ids are not EventID at versions base+1, base+2")
	}
	if data[0].ContentType != kdb.ContentTypeJson {
		t.Error("JSON data not sent as application/json")
	}
	if contentType([]byte("\x00\x01")) != kdb.ContentTypeBinary || contentType(nil) != kdb.ContentTypeBinary {
		t.Error("non-JSON data not sent as application/octet-stream")
	}
}

func TestClassify_ClientCodesToPortBehaviour(t *testing.T) {
	tests := []struct {
		code kdb.ErrorCode
		want errClass
	}{
		{kdb.ErrorUnavailable, classTransient},
		{kdb.ErrorCodeDeadlineExceeded, classTransient},
		{kdb.ErrorCodeConnectionClosed, classTransient},
		{kdb.ErrorCodeNotLeader, classTransient},
		{kdb.ErrorAborted, classTransient},
		{kdb.ErrorCodeWrongExpectedVersion, classConflict},
		{kdb.ErrorCodeResourceNotFound, classNotFound},
		{kdb.ErrorCodeUnknown, classFatal},
		{kdb.ErrorCodeUnsupportedFeature, classFatal},
		{kdb.ErrorCodeUnauthenticated, classFatal},
		{kdb.ErrorCodeAccessDenied, classFatal},
		{kdb.ErrorCodeStreamDeleted, classFatal},
		{kdb.ErrorCodeResourceAlreadyExists, classFatal},
		{kdb.ErrorCodeParsing, classFatal},
		{kdb.ErrorCodeInternalClient, classFatal},
		{kdb.ErrorCodeInternalServer, classFatal},
	}
	for _, tc := range tests {
		if got := classify(tc.code); got != tc.want {
			t.Errorf("classify(%d) = %d, want %d", tc.code, got, tc.want)
		}
	}
}

func TestCodeOf_FindsTheClientErrorThroughWrapping(t *testing.T) {
	// FromError is the only exported way to build a *kdb.Error: code Unknown.
	kerr, _ := kdb.FromError(errors.New("boom"))
	wrapped := fmt.Errorf("could not send append request. Reason: %w", kerr)
	if code, ok := codeOf(wrapped); !ok || code != kdb.ErrorCodeUnknown {
		t.Fatalf("codeOf(wrapped) = %d, %v", code, ok)
	}
	if _, ok := codeOf(errors.New("plain")); ok {
		t.Fatal("codeOf found a code in a plain error")
	}
	if classOf(errors.New("plain")) != classFatal || transient(nil) {
		t.Fatal("a plain error or nil is not fatal/non-transient")
	}
}

func TestActualVersion_FromTheClientsMessage(t *testing.T) {
	tests := []struct {
		msg    string
		want   uint64
		wantOK bool
	}{
		{"wrong expected version: expecting '4' but got '6'", 7, true},
		{"wrong expected version: expecting 'no_stream' but got '0'", 1, true},
		{"wrong expected version: expecting '2' but got 'no_stream'", 0, true},
		{"[ErrorCodeWrongExpectedVersion] x: wrong expected version: expecting 'any' but got 'garbage'", 0, false},
		{"something else", 0, false},
	}
	for _, tc := range tests {
		got, ok := actualVersion(errors.New(tc.msg))
		if got != tc.want || ok != tc.wantOK {
			t.Errorf("actualVersion(%q) = %d, %v; want %d, %v", tc.msg, got, ok, tc.want, tc.wantOK)
		}
	}
}

func TestCheckSize_RefusesOverTheLimitCountingTypesTwice(t *testing.T) {
	evs := []domain.NewEvent{{Type: "abc", Data: make([]byte, 10), Metadata: make([]byte, 4)}} // 10+4+6 = 20
	if err := checkSize("s", evs, 20); err != nil {
		t.Fatalf("at the limit: %v", err)
	}
	err := checkSize("s", evs, 19)
	if !errors.Is(err, ErrTooLarge) || !errors.Is(err, eventstore.ErrInvalid) {
		t.Fatalf("over the limit: %v, want ErrTooLarge and eventstore.ErrInvalid", err)
	}
	if !strings.Contains(err.Error(), "20 bytes") || !strings.Contains(err.Error(), "19") {
		t.Errorf("the error does not say the size and the limit: %v", err)
	}
}

func TestRedact_RemovesCredentials(t *testing.T) {
	tests := []struct{ in, want string }{
		{"esdb://admin:changeit@localhost:2113?tls=true", "esdb://REDACTED@localhost:2113?tls=true"},
		{"esdb+discover://u:p%40ss@cluster.example:2113", "esdb+discover://REDACTED@cluster.example:2113"},
		{"esdb://admin:pw@h1:2113,h2:2113,h3:2113?nodePreference=follower", "esdb://REDACTED@h1:2113,h2:2113,h3:2113?nodePreference=follower"},
		{"esdb://a:b@c@host:1", "esdb://REDACTED@host:1"},
		{"esdb://127.0.0.1:2113?tls=false", "esdb://127.0.0.1:2113?tls=false"},
		{"esdb://host:1/path@x?y=@z", "esdb://host:1/path@x?y=@z"},
		{"user:secret@host", "REDACTED@host"},
	}
	for _, tc := range tests {
		if got := Redact(tc.in); got != tc.want {
			t.Errorf("Redact(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
	if got := scrub(`parse "esdb://admin:hunter2@h:x": invalid port ":x" after host; hunter2`, "esdb://admin:hunter2@h:x"); strings.Contains(got, "hunter2") {
		t.Errorf("scrub left the password: %s", got)
	}
}

func TestOurs_PrefixesNamespaceAndSystemStreams(t *testing.T) {
	s := &Store{opts: Options{StreamPrefixes: []string{"contact-", "email-"}, Namespace: "ns1-"}.withDefaults()}
	tests := map[string]bool{
		"ns1-contact-7":  true,
		"ns1-email-a@b":  true,
		"ns1-login-x":    false,
		"contact-7":      false,
		"ns2-contact-7":  false,
		"$ns1-contact-7": false,
	}
	for stream, want := range tests {
		if got := s.ours(stream); got != want {
			t.Errorf("ours(%q) = %v, want %v", stream, got, want)
		}
	}
	if got := s.filterPrefixes(); len(got) != 2 || got[0] != "ns1-contact-" {
		t.Errorf("filterPrefixes = %v", got)
	}
	all := &Store{opts: Options{StreamPrefixes: []string{""}}.withDefaults()}
	if !all.ours("anything") || all.ours("$stats-127.0.0.1:2113") {
		t.Error(`prefix "" must take every stream but the server's`)
	}
	def := &Store{opts: Options{}.withDefaults()}
	for _, stream := range []string{"contact-1", "webhook-x", "email-a", "login-b"} {
		if !def.ours(stream) {
			t.Errorf("the default families leave out %s", stream)
		}
	}
}

func TestBackoff_GrowsAndIsCapped(t *testing.T) {
	prev := backoff(0)
	for n := 1; n < 20; n++ {
		d := backoff(n)
		if d < prev || d > 1e9 {
			t.Fatalf("backoff(%d) = %v after %v", n, d, prev)
		}
		prev = d
	}
}

func TestClassOf_RawGRPCErrors(t *testing.T) {
	tests := []struct {
		err  error
		want errClass
	}{
		{status.Error(codes.Unavailable, "connection refused"), classTransient},
		{fmt.Errorf("read: %w", status.Error(codes.Unavailable, "x")), classTransient},
		{status.Error(codes.Aborted, "x"), classTransient},
		{status.Error(codes.InvalidArgument, "maximum-append-size-exceeded"), classFatal},
		{errors.New("plain"), classFatal},
		{fmt.Errorf("could not send append request. Reason: %w", eofError()), classTransient},
		// The client closing its connection under a call (to reconnect).
		{status.Error(codes.Canceled, "grpc: the client connection is closing"), classTransient},
		{clientError(status.Error(codes.Canceled, "grpc: the client connection is closing")), classTransient},
		{fmt.Errorf("append: %w", clientError(status.Error(codes.Canceled, "grpc: the client connection is closing"))), classTransient},
		// A call canceled for another reason (its own context) is not.
		{status.Error(codes.Canceled, "context canceled"), classFatal},
	}
	for _, tc := range tests {
		if got := classOf(tc.err); got != tc.want {
			t.Errorf("classOf(%v) = %d, want %d", tc.err, got, tc.want)
		}
	}
}

// clientError is err as the client wraps a gRPC error it does not map.
func clientError(err error) error {
	e, _ := kdb.FromError(err)
	return e
}

// eofError is the client's error for a Send that saw the stream end:
// code Unknown over io.EOF (FromError builds exactly that).
func eofError() error {
	e, _ := kdb.FromError(io.EOF)
	return e
}
