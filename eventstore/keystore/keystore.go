// Package keystore implements crypto-shredding for generated passwords.
//
// A password that usersync generates for a user has to reach a CRM later, by a
// process that retries, so it must be recorded somewhere durable. The event
// log is durable but immutable: anything written to it stays readable for as
// long as the log exists. The password therefore never enters the log in the
// clear. Instead:
//
//  1. Seal creates a fresh random 256-bit key for a caller-chosen key id,
//     stores it durably in a separate SQLite key file (normally DATA/keys.db),
//     and encrypts the password with it (AES-256-GCM). Only the sealed value
//     and the key id go into the event log.
//  2. Whoever delivers the password calls Unseal with the key id and the
//     sealed value taken from the log.
//  3. Once the password has been delivered, or delivery has been given up,
//     Shred destroys the key. From then on the sealed value in the log can
//     never be decrypted again: the log keeps its history, but that part of
//     it is now noise.
//
// A key id is used for exactly one key, ever. Shred leaves a tombstone
// (key id and time of shredding, no key material) so that Unseal can report
// ErrShredded instead of ErrUnknownKey and Seal can refuse to reuse the id.
//
// # Sealed format (version 1)
//
//	offset  size  content
//	0       1     format version, 0x01
//	1       12    random GCM nonce
//	13      n+16  AES-256-GCM ciphertext of the n plaintext bytes, then the tag
//
// The additional authenticated data is the version byte followed by the key
// id's bytes, so a sealed value only opens under the key id it was sealed
// for, and a value whose version byte was altered fails authentication.
//
// # What "destroyed" means
//
// A shredded key must not be recoverable from the key file either. SQLite
// normally leaves deleted or overwritten row content in free space inside
// pages and on free-list pages, and in WAL mode old page images stay in the
// -wal file until a checkpoint overwrites them. The key file is therefore
// opened with
//
//   - PRAGMA secure_delete=ON, so SQLite overwrites freed content with zeros;
//   - PRAGMA journal_mode=DELETE (a rollback journal, never WAL), so old page
//     images only live in the -journal file for the duration of a transaction
//     and the file is deleted when the transaction commits;
//   - PRAGMA synchronous=FULL, so a key is on stable storage before Seal
//     returns, i.e. before the caller appends the sealed password to the log.
//
// Open verifies that these settings are in effect. The locking mode is left at
// NORMAL on purpose: in EXCLUSIVE locking mode SQLite keeps the rollback
// journal file around after commit and only zeroes its header, which would
// leave old page images (with key bytes) in the -journal file.
//
// The tests seal a few hundred passwords, shred them, close the store and
// then scan every file in the directory for the raw key bytes and for the
// plaintexts.
//
// Limits: the guarantee is about the files SQLite manages. Blocks of a deleted
// -journal file, copy-on-write filesystems, SSD wear levelling, backups and
// snapshots of the data directory, swap and core dumps are outside this
// package's control. Key bytes held in Go memory are zeroed after use on a
// best-effort basis (the AES key schedule lives until garbage collection).
//
// The store is safe for concurrent use by multiple goroutines. It is meant to
// be used by one process at a time.
package keystore

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"database/sql"
	"errors"
	"fmt"
	"time"
)

// Sentinel errors. Match them with errors.Is; the returned errors wrap them
// with the key id or file involved. Key ids are not secret (they are stored in
// the event log next to the sealed value) and may appear in error messages;
// key material and plaintext never do.
var (
	// ErrShredded reports that the key for a key id has been destroyed: the
	// sealed value can never be opened again.
	ErrShredded = errors.New("key shredded")
	// ErrUnknownKey reports that no key was ever created for a key id in this
	// key file.
	ErrUnknownKey = errors.New("unknown key id")
	// ErrKeyIDUsed reports that Seal was asked to create a key for a key id
	// that already has a key or whose key was shredded. Key ids are never
	// reused.
	ErrKeyIDUsed = errors.New("key id already used")
	// ErrInvalidSealed reports a sealed value that is malformed, has an
	// unsupported format version, or fails authentication: it was tampered
	// with, truncated, or sealed under a different key id.
	ErrInvalidSealed = errors.New("invalid sealed value")
	// ErrInvalidKeyID reports a key id that is empty or too long.
	ErrInvalidKeyID = errors.New("invalid key id")
	// ErrCorrupt reports a key file that is not a SQLite database or is
	// damaged.
	ErrCorrupt = errors.New("key file is corrupt")
	// ErrNotKeyStore reports a valid SQLite database that is not a key file
	// (for example the event log's database given by mistake). Open does not
	// modify such a file.
	ErrNotKeyStore = errors.New("file is not a key store")
)

const (
	// formatV1 is the version byte of the sealed format documented in the
	// package comment.
	formatV1 byte = 0x01
	// keySize is the AES-256 key size in bytes.
	keySize = 32
	// nonceSize is the standard GCM nonce size in bytes.
	nonceSize = 12
	// tagSize is the GCM authentication tag size in bytes.
	tagSize = 16
	// headerSize is the size of the fixed prefix of a sealed value.
	headerSize = 1 + nonceSize
	// MaxKeyIDLen is the longest key id, in bytes, that the store accepts.
	MaxKeyIDLen = 255
)

// Keys is an open key file. Create it with Open and release it with Close.
type Keys struct {
	db   *sql.DB
	path string
	// now is the clock for created_at/shredded_at; time.Now outside tests.
	now func() time.Time
}

// Seal creates a fresh random key for keyID, stores it durably (the key is on
// stable storage when Seal returns) and returns plaintext encrypted under it
// in the format described in the package comment.
//
// Seal fails with ErrKeyIDUsed if keyID already has a key or had one that was
// shredded. If Seal returns any other error the key may or may not have been
// stored; the caller must not retry with the same key id but use a new one.
func (k *Keys) Seal(ctx context.Context, keyID string, plaintext []byte) ([]byte, error) {
	if err := checkKeyID(keyID); err != nil {
		return nil, fmt.Errorf("keystore: seal: %w", err)
	}
	key := make([]byte, keySize)
	defer clear(key)
	if _, err := rand.Read(key); err != nil {
		return nil, fmt.Errorf("keystore: seal key id %q: generate key: %w", keyID, err)
	}
	aead, err := newAEAD(key)
	if err != nil {
		return nil, fmt.Errorf("keystore: seal key id %q: %w", keyID, err)
	}
	sealed := make([]byte, headerSize, headerSize+len(plaintext)+tagSize)
	sealed[0] = formatV1
	if _, err := rand.Read(sealed[1:headerSize]); err != nil {
		return nil, fmt.Errorf("keystore: seal key id %q: generate nonce: %w", keyID, err)
	}
	sealed = aead.Seal(sealed, sealed[1:headerSize], plaintext, additionalData(formatV1, keyID))

	if err := k.storeKey(ctx, keyID, key); err != nil {
		return nil, err
	}
	return sealed, nil
}

// storeKey inserts a new key row for keyID and commits it, refusing ids that
// already have a row (live or tombstone).
func (k *Keys) storeKey(ctx context.Context, keyID string, key []byte) error {
	tx, err := k.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("keystore: seal key id %q: begin: %w", keyID, err)
	}
	defer tx.Rollback() //nolint:errcheck // no-op after Commit

	res, err := tx.ExecContext(ctx,
		`INSERT INTO keys (key_id, key, created_at) VALUES (?, ?, ?) ON CONFLICT (key_id) DO NOTHING`,
		keyID, key, k.now().UnixMilli())
	if err != nil {
		return fmt.Errorf("keystore: seal key id %q: store key: %w", keyID, err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return fmt.Errorf("keystore: seal key id %q: store key: %w", keyID, err)
	}
	if n == 0 {
		var shreddedAt sql.NullInt64
		if err := tx.QueryRowContext(ctx, `SELECT shredded_at FROM keys WHERE key_id = ?`, keyID).Scan(&shreddedAt); err != nil {
			return fmt.Errorf("keystore: seal key id %q: key id is taken, but reading its state failed: %w", keyID, err)
		}
		if shreddedAt.Valid {
			return fmt.Errorf("keystore: seal key id %q: key was shredded at %s: %w",
				keyID, formatMillis(shreddedAt.Int64), ErrKeyIDUsed)
		}
		return fmt.Errorf("keystore: seal key id %q: a key already exists: %w", keyID, ErrKeyIDUsed)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("keystore: seal key id %q: commit: %w", keyID, err)
	}
	return nil
}

// Unseal decrypts a value returned by Seal for the same keyID.
//
// It fails with ErrShredded if the key was destroyed, ErrUnknownKey if keyID
// never had a key in this key file, and ErrInvalidSealed if sealed is
// malformed, was tampered with or was sealed under a different key id.
func (k *Keys) Unseal(ctx context.Context, keyID string, sealed []byte) ([]byte, error) {
	if err := checkKeyID(keyID); err != nil {
		return nil, fmt.Errorf("keystore: unseal: %w", err)
	}
	var (
		key        []byte
		shreddedAt sql.NullInt64
	)
	err := k.db.QueryRowContext(ctx, `SELECT key, shredded_at FROM keys WHERE key_id = ?`, keyID).Scan(&key, &shreddedAt)
	defer clear(key)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return nil, fmt.Errorf("keystore: unseal key id %q: %w", keyID, ErrUnknownKey)
	case err != nil:
		return nil, fmt.Errorf("keystore: unseal key id %q: load key: %w", keyID, err)
	case shreddedAt.Valid:
		return nil, fmt.Errorf("keystore: unseal key id %q: key was shredded at %s: %w",
			keyID, formatMillis(shreddedAt.Int64), ErrShredded)
	case len(key) != keySize:
		// The schema's CHECK constraint makes this unreachable unless the
		// file was edited behind SQLite's back.
		return nil, fmt.Errorf("keystore: unseal key id %q: stored key has the wrong size: %w", keyID, ErrCorrupt)
	}

	if len(sealed) < headerSize+tagSize {
		return nil, fmt.Errorf("keystore: unseal key id %q: sealed value is %d bytes, shorter than the minimum %d: %w",
			keyID, len(sealed), headerSize+tagSize, ErrInvalidSealed)
	}
	if sealed[0] != formatV1 {
		return nil, fmt.Errorf("keystore: unseal key id %q: unsupported format version %d: %w",
			keyID, sealed[0], ErrInvalidSealed)
	}
	aead, err := newAEAD(key)
	if err != nil {
		return nil, fmt.Errorf("keystore: unseal key id %q: %w", keyID, err)
	}
	plaintext, err := aead.Open(nil, sealed[1:headerSize], sealed[headerSize:], additionalData(sealed[0], keyID))
	if err != nil {
		// Deliberately not wrapping err: it carries nothing useful.
		return nil, fmt.Errorf("keystore: unseal key id %q: authentication failed (tampered, truncated, or sealed under a different key id): %w",
			keyID, ErrInvalidSealed)
	}
	return plaintext, nil
}

// Shred destroys the key for keyID and leaves a tombstone holding no key
// material. It is idempotent: shredding a shredded key succeeds and keeps the
// original time of shredding. Shredding a key id that never had a key also
// succeeds and records a tombstone, so that after Shred returns nil, no key
// exists for keyID and Seal will never create one.
func (k *Keys) Shred(ctx context.Context, keyID string) error {
	if err := checkKeyID(keyID); err != nil {
		return fmt.Errorf("keystore: shred: %w", err)
	}
	now := k.now().UnixMilli()
	// Setting key to NULL makes SQLite free the cell's old content, which
	// secure_delete overwrites with zeros.
	_, err := k.db.ExecContext(ctx, `
		INSERT INTO keys (key_id, key, created_at, shredded_at) VALUES (?1, NULL, ?2, ?2)
		ON CONFLICT (key_id) DO UPDATE SET key = NULL, shredded_at = excluded.shredded_at
		WHERE keys.shredded_at IS NULL`,
		keyID, now)
	if err != nil {
		return fmt.Errorf("keystore: shred key id %q: %w", keyID, err)
	}
	return nil
}

// Has reports whether the key file holds a live key for keyID: false for
// a key id it never had, and for a shredded key. With several nodes on one
// event log each holds the keys of the passwords it issued; a node returns
// a password only if it has its key (domain/command asks through Has).
func (k *Keys) Has(ctx context.Context, keyID string) (bool, error) {
	if err := checkKeyID(keyID); err != nil {
		return false, fmt.Errorf("keystore: has: %w", err)
	}
	var live bool
	err := k.db.QueryRowContext(ctx, `SELECT shredded_at IS NULL AND key IS NOT NULL FROM keys WHERE key_id = ?`, keyID).Scan(&live)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return false, nil
	case err != nil:
		return false, fmt.Errorf("keystore: look up key id %q: %w", keyID, err)
	}
	return live, nil
}

// Close closes the key file. Calls on a closed Keys return errors.
func (k *Keys) Close() error {
	if err := k.db.Close(); err != nil {
		return fmt.Errorf("keystore: close %q: %w", k.path, err)
	}
	return nil
}

func checkKeyID(keyID string) error {
	switch {
	case keyID == "":
		return fmt.Errorf("empty key id: %w", ErrInvalidKeyID)
	case len(keyID) > MaxKeyIDLen:
		return fmt.Errorf("key id is %d bytes, longer than %d: %w", len(keyID), MaxKeyIDLen, ErrInvalidKeyID)
	}
	return nil
}

func newAEAD(key []byte) (cipher.AEAD, error) {
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("create cipher: %w", err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("create GCM: %w", err)
	}
	return aead, nil
}

// additionalData binds a sealed value to its format version and key id.
func additionalData(version byte, keyID string) []byte {
	ad := make([]byte, 0, 1+len(keyID))
	ad = append(ad, version)
	return append(ad, keyID...)
}

func formatMillis(ms int64) string {
	return time.UnixMilli(ms).UTC().Format(time.RFC3339Nano)
}
