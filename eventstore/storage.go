package eventstore

import (
	"context"
	"errors"
	"fmt"
	"syscall"

	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"

	"github.com/usersync/usersync/domain"
)

// temporaryError is a storage error marked domain.ErrStorageUnavailable.
type temporaryError struct{ err error }

func (e *temporaryError) Error() string { return e.err.Error() }

// Unwrap makes errors.Is true both for the cause and for
// domain.ErrStorageUnavailable.
func (e *temporaryError) Unwrap() []error { return []error{e.err, domain.ErrStorageUnavailable} }

// TemporaryStorage reports whether err is a storage error that passes by
// itself: the disk or a quota is full (SQLITE_FULL, ENOSPC, EDQUOT), or the
// database is busy or locked (SQLITE_BUSY, SQLITE_LOCKED).
func TemporaryStorage(err error) bool {
	if err == nil {
		return false
	}
	if errors.Is(err, domain.ErrStorageUnavailable) || errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		return true
	}
	var code int
	var se *sqlite.Error
	var re *sqliteError
	switch {
	case errors.As(err, &se):
		code = se.Code()
	case errors.As(err, &re):
		code = int(re.code)
	default:
		return false
	}
	switch code & 0xff {
	case sqlite3.SQLITE_FULL, sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED:
		return true
	}
	return false
}

// MarkStorage returns err marked with domain.ErrStorageUnavailable when it
// is a temporary storage error (see TemporaryStorage), else err unchanged.
// The views and the key store mark their SQLite errors with it, so the
// pipeline retries them instead of parking the event.
func MarkStorage(err error) error {
	if err == nil || errors.Is(err, domain.ErrStorageUnavailable) || !TemporaryStorage(err) {
		return err
	}
	return &temporaryError{err: err}
}

// Writable reports whether the store can take appends: nil unless the
// store is unusable (a failed sync: reopen it) or its last commit failed
// and none succeeded since. In the second case it first tries a small
// write of its own (it rewrites the schema version in a transaction of
// its own, one page of log): when that commits, the disk has room again
// and the store is writable. It is meant for /readyz.
func (s *SQLite) Writable(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("check event store %s: %w", s.path, err)
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return fmt.Errorf("check event store %s: %w", s.path, ErrClosed)
	}
	if err := s.failure(); err != nil {
		return err
	}
	last := s.lastErr.Load()
	if last == nil {
		return nil
	}
	s.probeMu.Lock()
	defer s.probeMu.Unlock()
	if now := s.lastErr.Load(); now != last {
		// A commit answered meanwhile (or another probe ran).
		if now == nil {
			return nil
		}
		last = now
	}
	pctx, cancel := context.WithTimeout(ctx, s.cfg.busyTimeout)
	defer cancel()
	if _, err := s.pdb.ExecContext(pctx, fmt.Sprintf(`PRAGMA user_version = %d`, schemaVersion)); err != nil {
		return fmt.Errorf("event store %s cannot take appends: the last commit failed (%w), and so does a test write: %w", s.path, *last, MarkStorage(err))
	}
	s.lastErr.CompareAndSwap(last, nil)
	return nil
}
