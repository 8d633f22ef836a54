package keystore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"
)

const (
	// applicationID marks a SQLite file as a usersync key file
	// (PRAGMA application_id); it is "usKS" in ASCII.
	applicationID = 0x75734b53
	// schemaVersion is the PRAGMA user_version of the current schema.
	schemaVersion = 1

	// fileMode is the permission of the key file. SQLite gives its -journal
	// file the permissions of the database file.
	fileMode os.FileMode = 0o600
	// dirMode is used when the key file's directory has to be created.
	dirMode os.FileMode = 0o700
)

// inspectDSNParams are used for the first, read-only look at an existing
// file: nothing that could modify a file that turns out not to be a key file.
const inspectDSNParams = "?_pragma=busy_timeout(5000)&_query_only=1"

// dsnParams configure every connection to the key file. See the package
// comment for why each setting matters. _txlock=immediate makes every
// transaction take the write lock up front, so a read-then-write transaction
// never fails with SQLITE_BUSY halfway through.
const dsnParams = "?_pragma=busy_timeout(5000)" +
	"&_pragma=cell_size_check(ON)" +
	"&_pragma=journal_mode(DELETE)" +
	"&_pragma=secure_delete(ON)" +
	"&_pragma=synchronous(FULL)" +
	"&_pragma=trusted_schema(OFF)" +
	"&_txlock=immediate"

const schema = `
CREATE TABLE keys (
	key_id      TEXT    NOT NULL PRIMARY KEY,
	-- The 256-bit key; NULL once shredded.
	key         BLOB    CHECK (key IS NULL OR length(key) = 32),
	-- Unix milliseconds, UTC.
	created_at  INTEGER NOT NULL,
	-- Unix milliseconds, UTC; set exactly when key is NULL (a tombstone).
	shredded_at INTEGER,
	CHECK ((key IS NULL) = (shredded_at IS NOT NULL))
) STRICT`

// fileState is what inspect found in a database file.
type fileState int

const (
	stateFresh fileState = iota // empty database, nothing created yet
	stateOurs                   // a key file with the current schema
)

// Open opens the key file at path, creating it (mode 0600, and its directory
// with mode 0700) if it does not exist. An existing file readable by group or
// others has its permissions tightened to 0600.
//
// Open fails with ErrCorrupt if the file is not a SQLite database or is
// damaged, and with ErrNotKeyStore if it is some other SQLite database; both
// errors name the file. Open never modifies a file it rejects.
func Open(ctx context.Context, path string) (*Keys, error) {
	if path == "" {
		return nil, errors.New("keystore: open: empty path")
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("keystore: open %q: %w", path, err)
	}
	// The driver treats everything after the first '?' as parameters.
	if strings.ContainsRune(abs, '?') {
		return nil, fmt.Errorf("keystore: open %q: path must not contain '?'", abs)
	}
	if err := prepareFile(abs); err != nil {
		return nil, fmt.Errorf("keystore: open %q: %w", abs, err)
	}

	// Look at the file before configuring it: journal_mode(DELETE) would
	// convert a WAL database, and this must not happen to a file that is not
	// ours.
	if _, err := inspectFile(ctx, abs); err != nil {
		return nil, err
	}

	db, err := sql.Open("sqlite", abs+dsnParams)
	if err != nil {
		return nil, fmt.Errorf("keystore: open %q: %w", abs, err)
	}
	// One connection: writes are serialised anyway, it keeps the rollback
	// journal from ever meeting a concurrent reader of this process, and it
	// makes the pragma check below cover the connection every call uses.
	db.SetMaxOpenConns(1)
	db.SetMaxIdleConns(1)
	db.SetConnMaxLifetime(0)
	db.SetConnMaxIdleTime(0)

	k := &Keys{db: db, path: abs, now: time.Now}
	if err := k.init(ctx); err != nil {
		_ = db.Close()
		return nil, err
	}
	return k, nil
}

// prepareFile creates the directory and the file with restrictive
// permissions, so that SQLite never creates it with the default 0644.
func prepareFile(path string) error {
	if err := os.MkdirAll(filepath.Dir(path), dirMode); err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, fileMode)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("not a regular file (%s)", fi.Mode().Type())
	}
	if fi.Mode().Perm()&^fileMode != 0 {
		if err := f.Chmod(fileMode); err != nil {
			return fmt.Errorf("restrict permissions to %#o: %w", fileMode, err)
		}
	}
	return nil
}

// inspectFile opens path read-only and checks that it is empty or a healthy
// key file.
func inspectFile(ctx context.Context, path string) (fileState, error) {
	db, err := sql.Open("sqlite", path+inspectDSNParams)
	if err != nil {
		return 0, fmt.Errorf("keystore: open %q: %w", path, err)
	}
	defer db.Close()
	db.SetMaxOpenConns(1)

	state, err := inspect(ctx, db, path)
	if err != nil {
		return 0, err
	}
	if state == stateOurs {
		var result string
		if err := db.QueryRowContext(ctx, `PRAGMA quick_check(1)`).Scan(&result); err != nil {
			return 0, openError(path, "integrity check", err)
		}
		if result != "ok" {
			return 0, fmt.Errorf("keystore: open %q: integrity check: %s: %w", path, result, ErrCorrupt)
		}
	}
	return state, nil
}

// querier is the part of *sql.DB and *sql.Tx that inspect needs.
type querier interface {
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// inspect classifies the database behind q.
func inspect(ctx context.Context, q querier, path string) (fileState, error) {
	var appID, version, objects int64
	if err := q.QueryRowContext(ctx, `PRAGMA application_id`).Scan(&appID); err != nil {
		return 0, openError(path, "read header", err)
	}
	if err := q.QueryRowContext(ctx, `PRAGMA user_version`).Scan(&version); err != nil {
		return 0, openError(path, "read header", err)
	}
	if err := q.QueryRowContext(ctx, `SELECT count(*) FROM sqlite_schema`).Scan(&objects); err != nil {
		return 0, openError(path, "read schema", err)
	}
	switch {
	case appID == 0 && version == 0 && objects == 0:
		return stateFresh, nil
	case appID != applicationID:
		return 0, fmt.Errorf("keystore: open %q: application id %#x, want %#x: %w", path, appID, applicationID, ErrNotKeyStore)
	case version > schemaVersion:
		return 0, fmt.Errorf("keystore: open %q: schema version %d is newer than this program supports (%d)", path, version, schemaVersion)
	case version != schemaVersion:
		return 0, fmt.Errorf("keystore: open %q: unknown schema version %d: %w", path, version, ErrCorrupt)
	}
	var tables int64
	if err := q.QueryRowContext(ctx, `SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name = 'keys'`).Scan(&tables); err != nil {
		return 0, openError(path, "read schema", err)
	}
	if tables != 1 {
		return 0, fmt.Errorf("keystore: open %q: table keys is missing: %w", path, ErrCorrupt)
	}
	return stateOurs, nil
}

// init creates the schema in a fresh file and checks that the connection has
// the settings crypto-shredding depends on.
func (k *Keys) init(ctx context.Context) error {
	tx, err := k.db.BeginTx(ctx, nil)
	if err != nil {
		return openError(k.path, "begin", err)
	}
	defer tx.Rollback() //nolint:errcheck // no-op after Commit

	// Inspect again inside the write transaction: another process may have
	// initialised the file since inspectFile looked at it.
	state, err := inspect(ctx, tx, k.path)
	if err != nil {
		return err
	}
	if state == stateFresh {
		for _, stmt := range []string{
			schema,
			fmt.Sprintf(`PRAGMA application_id = %d`, applicationID),
			fmt.Sprintf(`PRAGMA user_version = %d`, schemaVersion),
		} {
			if _, err := tx.ExecContext(ctx, stmt); err != nil {
				return openError(k.path, "create schema", err)
			}
		}
	}
	if err := tx.Commit(); err != nil {
		return openError(k.path, "commit", err)
	}
	return k.checkPragmas(ctx)
}

// checkPragmas verifies the settings the package comment promises, so that a
// driver change that silently dropped a DSN parameter cannot weaken them.
func (k *Keys) checkPragmas(ctx context.Context) error {
	checks := []struct {
		pragma string
		want   string
	}{
		{"journal_mode", "delete"},
		{"secure_delete", "1"},
		{"synchronous", "2"},
		{"locking_mode", "normal"},
	}
	for _, c := range checks {
		var got string
		if err := k.db.QueryRowContext(ctx, `PRAGMA `+c.pragma).Scan(&got); err != nil {
			return openError(k.path, "read PRAGMA "+c.pragma, err)
		}
		if !strings.EqualFold(got, c.want) {
			return fmt.Errorf("keystore: open %q: PRAGMA %s is %q, want %q", k.path, c.pragma, got, c.want)
		}
	}
	return nil
}

// openError wraps an error from opening or checking the file, adding
// ErrCorrupt when SQLite says the file is damaged or not a database.
func openError(path, what string, err error) error {
	var serr *sqlite.Error
	if errors.As(err, &serr) {
		switch serr.Code() & 0xff {
		case sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB:
			return fmt.Errorf("keystore: open %q: %s: %w: %w", path, what, ErrCorrupt, err)
		}
	}
	return fmt.Errorf("keystore: open %q: %s: %w", path, what, err)
}
