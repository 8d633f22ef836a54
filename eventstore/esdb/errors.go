package esdb

import (
	"errors"
	"fmt"
	"io"
	"regexp"
	"sort"
	"strconv"
	"strings"

	kdb "github.com/EventStore/EventStore-Client-Go/v4/esdb"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/usersync/usersync/domain"
)

var (
	// ErrUnavailable is matched (errors.Is) by the errors of calls that
	// could not reach the server: it did not answer within the connect
	// timeout, or transport errors went on for Options.RetryTimeout. The
	// call may be tried again later; an append may or may not have landed
	// (retrying it at the same expected version is safe). It also matches
	// domain.ErrStorageUnavailable, so that usersync treats it as the
	// embedded store's full disk: a webhook it stops is answered 503, and a
	// process manager retries it rather than parking the event.
	ErrUnavailable error = unavailableError{}
	// ErrTooLarge is matched by the error of an append over
	// Options.MaxAppendSize; it also matches eventstore.ErrInvalid.
	ErrTooLarge = errors.New("append too large for the server")
)

// codeOf finds the client's error code in err's chain (the client wraps its
// *Error with fmt.Errorf, so errors.As, not kdb.FromError).
func codeOf(err error) (kdb.ErrorCode, bool) {
	var e *kdb.Error
	if err == nil || !errors.As(err, &e) {
		return 0, false
	}
	return e.Code(), true
}

// errClass is what the adapter does with an error code of the client.
type errClass int

const (
	// classFatal: report the error (wrapped) to the caller.
	classFatal errClass = iota
	// classTransient: a transport failure; retry the same request.
	classTransient
	// classConflict: wrong expected version; a *domain.ConcurrencyError.
	classConflict
	// classNotFound: the stream does not exist; a read yields no events.
	classNotFound
)

// classify maps the client's error codes to what the adapter does.
func classify(code kdb.ErrorCode) errClass {
	switch code {
	case kdb.ErrorUnavailable, kdb.ErrorCodeDeadlineExceeded, kdb.ErrorCodeConnectionClosed,
		kdb.ErrorCodeNotLeader, kdb.ErrorAborted:
		return classTransient
	case kdb.ErrorCodeWrongExpectedVersion:
		return classConflict
	case kdb.ErrorCodeResourceNotFound:
		return classNotFound
	}
	return classFatal
}

// classOf classifies err by the client's code in its chain (an unknown
// error over io.EOF is a closed connection). Some calls
// return gRPC's error unwrapped (a read whose stream cannot be opened): those
// are classified by their gRPC code. Other errors are fatal.
func classOf(err error) errClass {
	if code, ok := codeOf(err); ok {
		if code == kdb.ErrorCodeUnknown && (errors.Is(err, io.EOF) || connClosing(err)) {
			// The connection closed under an append's client stream (Send
			// saw EOF), or the client closed it to reconnect (to a new
			// leader) with the call in flight: the request may or may not
			// have landed, and retrying it is what the exact revision and
			// the ids are for.
			return classTransient
		}
		return classify(code)
	}
	if rawUnavailable(err) || connClosing(err) || errors.Is(err, errRetired) {
		return classTransient
	}
	return classFatal
}

// connClosing reports gRPC's error for a call on a connection the client
// is closing (Canceled, "grpc: the client connection is closing"): the
// client replaces its connection after a not-leader answer or a lost
// server, and calls in flight on the old one end with it. Seen under a
// leader change (TestTwoNodes_LeaderChangeUnderLoad_DelaysLosesNothing).
func connClosing(err error) bool {
	st, ok := status.FromError(err)
	return err != nil && ok && st.Code() == codes.Canceled && strings.Contains(st.Message(), "client connection is closing")
}

// rawUnavailable reports a gRPC Unavailable (or Aborted) error the client
// passed on without translating it, and so without reconnecting.
func rawUnavailable(err error) bool {
	if err == nil {
		return false
	}
	if _, ok := codeOf(err); ok {
		return false
	}
	st, ok := status.FromError(err)
	return ok && (st.Code() == codes.Unavailable || st.Code() == codes.Aborted)
}

// invalidPosition reports the server's answer to a read of $all from a
// position inside a log record (InvalidArgument, "Trying to read from an
// invalid position.").
func invalidPosition(err error) bool {
	st, ok := status.FromError(err)
	return err != nil && ok && st.Code() == codes.InvalidArgument && strings.Contains(st.Message(), "invalid position")
}

// transient reports whether err is a transport failure worth retrying with
// the same request.
func transient(err error) bool { return classOf(err) == classTransient }

func isEOF(err error) bool { return errors.Is(err, io.EOF) }

// wevActual matches the client's wrong-expected-version message,
// "wrong expected version: expecting 'E' but got 'C'": C is the stream's
// current revision or no_stream.
var wevActual = regexp.MustCompile(`but got '([^']*)'`)

// actualVersion reads the stream's current version out of a
// wrong-expected-version error (ok false when it cannot).
func actualVersion(err error) (uint64, bool) {
	m := wevActual.FindStringSubmatch(err.Error())
	if m == nil {
		return 0, false
	}
	if m[1] == "no_stream" {
		return 0, true
	}
	rev, perr := strconv.ParseInt(m[1], 10, 64)
	if perr != nil || rev < 0 {
		return 0, false
	}
	return versionOf(uint64(rev)), true
}

// conflict turns a wrong-expected-version answer into the port's
// *domain.ConcurrencyError; ok is false for other errors or when the actual
// version cannot be read from it.
func conflict(stream string, expected domain.ExpectedVersion, err error) (*domain.ConcurrencyError, bool) {
	if classOf(err) != classConflict {
		return nil, false
	}
	actual, ok := actualVersion(err)
	if !ok {
		return nil, false
	}
	return &domain.ConcurrencyError{Stream: stream, Expected: expected, Actual: actual}, true
}

// Redact returns connString with the credentials (user:password@) replaced
// by "REDACTED@", fit for logs and errors. It works on strings the client
// would refuse too.
func Redact(connString string) string {
	scheme, rest, ok := strings.Cut(connString, "://")
	if !ok {
		if at := strings.LastIndex(connString, "@"); at >= 0 {
			return "REDACTED@" + connString[at+1:]
		}
		return connString
	}
	end := strings.IndexAny(rest, "/?#")
	if end < 0 {
		end = len(rest)
	}
	authority := rest[:end]
	at := strings.LastIndex(authority, "@")
	if at < 0 {
		return connString
	}
	return scheme + "://REDACTED@" + rest[at+1:]
}

// scrub removes connString and its password from msg (the URL parser
// quotes the whole string in its errors).
func scrub(msg, connString string) string {
	msg = strings.ReplaceAll(msg, connString, Redact(connString))
	if pw := password(connString); pw != "" {
		msg = strings.ReplaceAll(msg, pw, "REDACTED")
	}
	return msg
}

// parseError is the error of a connection string the client refuses. A
// password holding '/', '?' or '#' (a base64 one) ends the client's idea of
// the authority early, so that pieces of it land in the client's error and
// Redact does not see them as credentials: here everything before the last
// '@' counts as the user and password, and every piece of it is taken out
// of the client's message.
func parseError(connString string, err error) error {
	scheme, rest, _ := strings.Cut(connString, "://")
	at := strings.LastIndex(rest, "@")
	if at < 0 {
		return fmt.Errorf("esdb: connection string %s: %s", Redact(connString), scrub(err.Error(), connString))
	}
	info := rest[:at]
	msg := strings.ReplaceAll(err.Error(), connString, scheme+"://REDACTED@"+rest[at+1:])
	pieces := strings.FieldsFunc(info, func(r rune) bool { return strings.ContainsRune(":/?#@&=", r) })
	sort.Slice(pieces, func(i, j int) bool { return len(pieces[i]) > len(pieces[j]) })
	msg = strings.ReplaceAll(msg, info, "REDACTED")
	for _, p := range pieces {
		if len(p) >= 2 {
			msg = strings.ReplaceAll(msg, p, "REDACTED")
		}
	}
	hint := ""
	if strings.ContainsAny(info, "/?#") {
		hint = "; a user or password holding '/', '?' or '#' must be percent-encoded (%2F, %3F, %23)"
	}
	return fmt.Errorf("esdb: connection string %s://REDACTED@%s: %s%s", scheme, rest[at+1:], msg, hint)
}

// password is the password part of connString's user info, if any.
func password(connString string) string {
	_, rest, ok := strings.Cut(connString, "://")
	if !ok {
		return ""
	}
	end := strings.IndexAny(rest, "/?#")
	if end < 0 {
		end = len(rest)
	}
	authority := rest[:end]
	at := strings.LastIndex(authority, "@")
	if at < 0 {
		return ""
	}
	_, pw, _ := strings.Cut(authority[:at], ":")
	return pw
}

// unavailableError is ErrUnavailable: its own sentinel, that also matches
// domain.ErrStorageUnavailable.
type unavailableError struct{}

func (unavailableError) Error() string        { return "event store unavailable" }
func (unavailableError) Is(target error) bool { return target == domain.ErrStorageUnavailable }
