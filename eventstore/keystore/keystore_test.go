package keystore

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// openTemp opens a key file in a fresh temporary directory and closes it at
// the end of the test.
func openTemp(t *testing.T) (k *Keys, path string) {
	t.Helper()
	path = filepath.Join(t.TempDir(), "keys.db")
	k = mustOpen(t, path)
	t.Cleanup(func() { _ = k.Close() })
	return k, path
}

func mustOpen(t *testing.T, path string) *Keys {
	t.Helper()
	k, err := Open(t.Context(), path)
	if err != nil {
		t.Fatalf("Open(%q): %v", path, err)
	}
	return k
}

func mustClose(t *testing.T, k *Keys) {
	t.Helper()
	if err := k.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
}

func mustSeal(t *testing.T, k *Keys, keyID string, plaintext []byte) []byte {
	t.Helper()
	sealed, err := k.Seal(t.Context(), keyID, plaintext)
	if err != nil {
		t.Fatalf("Seal(%q): %v", keyID, err)
	}
	return sealed
}

// rawKey reads the stored key of keyID straight from the table; this is the
// test's view of the key material that shredding must destroy.
func rawKey(t *testing.T, k *Keys, keyID string) []byte {
	t.Helper()
	var key []byte
	if err := k.db.QueryRowContext(t.Context(), `SELECT key FROM keys WHERE key_id = ?`, keyID).Scan(&key); err != nil {
		t.Fatalf("read raw key %q: %v", keyID, err)
	}
	if len(key) != keySize {
		t.Fatalf("raw key %q has %d bytes, want %d", keyID, len(key), keySize)
	}
	return key
}

// fixedClock returns a clock that reports the given times in order, then
// keeps reporting the last one.
func fixedClock(times ...time.Time) func() time.Time {
	var mu sync.Mutex
	return func() time.Time {
		mu.Lock()
		defer mu.Unlock()
		now := times[0]
		if len(times) > 1 {
			times = times[1:]
		}
		return now
	}
}

func TestSealUnsealRoundTrip(t *testing.T) {
	k, _ := openTemp(t)
	tests := []struct {
		name      string
		plaintext []byte
	}{
		{"empty", nil},
		{"one byte", []byte("x")},
		{"generated password", []byte("Zr4-k~q_9.WmPaLs3xTe")},
		{"utf-8", []byte("pässwörd-日本語")},
		{"binary", []byte{0, 1, 2, 0xff, 0xfe, 0}},
		{"large", bytes.Repeat([]byte("0123456789abcdef"), 4096)},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			keyID := fmt.Sprintf("round-trip-%d", i)
			sealed := mustSeal(t, k, keyID, tt.plaintext)
			if want := headerSize + len(tt.plaintext) + tagSize; len(sealed) != want {
				t.Errorf("len(sealed) = %d, want %d", len(sealed), want)
			}
			if sealed[0] != formatV1 {
				t.Errorf("sealed[0] = %#x, want %#x", sealed[0], formatV1)
			}
			if len(tt.plaintext) >= 4 && bytes.Contains(sealed, tt.plaintext) {
				t.Error("sealed value contains the plaintext")
			}
			got, err := k.Unseal(t.Context(), keyID, sealed)
			if err != nil {
				t.Fatalf("Unseal: %v", err)
			}
			if !bytes.Equal(got, tt.plaintext) {
				t.Errorf("Unseal = %q, want %q", got, tt.plaintext)
			}
		})
	}
}

func TestSealUsesFreshKeyAndNonce(t *testing.T) {
	k, _ := openTemp(t)
	plaintext := []byte("same-password-for-both")
	a := mustSeal(t, k, "a", plaintext)
	b := mustSeal(t, k, "b", plaintext)
	if bytes.Equal(a[1:headerSize], b[1:headerSize]) {
		t.Error("two seals used the same nonce")
	}
	if bytes.Equal(a[headerSize:], b[headerSize:]) {
		t.Error("two seals of the same plaintext produced the same ciphertext")
	}
	if bytes.Equal(rawKey(t, k, "a"), rawKey(t, k, "b")) {
		t.Error("two key ids got the same key")
	}
}

func TestUnsealRejects(t *testing.T) {
	k, _ := openTemp(t)
	plaintext := []byte("correct-horse-battery-staple")
	sealed := mustSeal(t, k, "victim", plaintext)
	otherSealed := mustSeal(t, k, "other", []byte("another-password-entirely"))
	mustSeal(t, k, "doomed", plaintext)
	if err := k.Shred(t.Context(), "doomed"); err != nil {
		t.Fatalf("Shred: %v", err)
	}

	mutate := func(f func(b []byte) []byte) []byte {
		return f(bytes.Clone(sealed))
	}
	tests := []struct {
		name   string
		keyID  string
		sealed []byte
		want   error
	}{
		{"version byte changed", "victim", mutate(func(b []byte) []byte { b[0] = 0x02; return b }), ErrInvalidSealed},
		{"nonce bit flipped", "victim", mutate(func(b []byte) []byte { b[1] ^= 0x01; return b }), ErrInvalidSealed},
		{"ciphertext bit flipped", "victim", mutate(func(b []byte) []byte { b[headerSize] ^= 0x80; return b }), ErrInvalidSealed},
		{"tag bit flipped", "victim", mutate(func(b []byte) []byte { b[len(b)-1] ^= 0x01; return b }), ErrInvalidSealed},
		{"truncated by one byte", "victim", mutate(func(b []byte) []byte { return b[:len(b)-1] }), ErrInvalidSealed},
		{"extra byte appended", "victim", mutate(func(b []byte) []byte { return append(b, 0) }), ErrInvalidSealed},
		{"header only", "victim", mutate(func(b []byte) []byte { return b[:headerSize] }), ErrInvalidSealed},
		{"empty", "victim", nil, ErrInvalidSealed},
		{"another id's sealed value", "victim", otherSealed, ErrInvalidSealed},
		{"wrong existing key id", "other", sealed, ErrInvalidSealed},
		{"unknown key id", "never-sealed", sealed, ErrUnknownKey},
		{"shredded key id", "doomed", sealed, ErrShredded},
		{"empty key id", "", sealed, ErrInvalidKeyID},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := k.Unseal(t.Context(), tt.keyID, tt.sealed)
			if !errors.Is(err, tt.want) {
				t.Fatalf("Unseal error = %v, want %v", err, tt.want)
			}
			if got != nil {
				t.Errorf("Unseal returned %d bytes along with the error", len(got))
			}
			if strings.Contains(err.Error(), string(plaintext)) {
				t.Errorf("error message contains the plaintext: %v", err)
			}
		})
	}

	// The untouched value still opens: nothing above damaged the key.
	if got, err := k.Unseal(t.Context(), "victim", sealed); err != nil || !bytes.Equal(got, plaintext) {
		t.Fatalf("Unseal(original) = %q, %v", got, err)
	}
}

func TestSealRefusesReusedKeyID(t *testing.T) {
	k, _ := openTemp(t)
	ctx := t.Context()
	original := []byte("first-password-0001")
	liveSealed := mustSeal(t, k, "live", original)
	mustSeal(t, k, "shredded", original)
	if err := k.Shred(ctx, "shredded"); err != nil {
		t.Fatal(err)
	}
	if err := k.Shred(ctx, "tombstone-only"); err != nil {
		t.Fatal(err)
	}

	for _, keyID := range []string{"live", "shredded", "tombstone-only"} {
		t.Run(keyID, func(t *testing.T) {
			sealed, err := k.Seal(ctx, keyID, []byte("second-password-0002"))
			if !errors.Is(err, ErrKeyIDUsed) {
				t.Fatalf("Seal(%q) error = %v, want ErrKeyIDUsed", keyID, err)
			}
			if sealed != nil {
				t.Error("Seal returned a sealed value along with the error")
			}
		})
	}

	// The refused Seal must not have replaced the live key...
	if got, err := k.Unseal(ctx, "live", liveSealed); err != nil || !bytes.Equal(got, original) {
		t.Fatalf("Unseal(live) after refused reuse = %q, %v", got, err)
	}
	// ...nor resurrected a shredded one.
	for _, keyID := range []string{"shredded", "tombstone-only"} {
		if _, err := k.Unseal(ctx, keyID, liveSealed); !errors.Is(err, ErrShredded) {
			t.Errorf("Unseal(%q) error = %v, want ErrShredded", keyID, err)
		}
	}
}

func TestShred(t *testing.T) {
	k, _ := openTemp(t)
	ctx := t.Context()
	firstShred := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	k.now = fixedClock(time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC), firstShred, firstShred.Add(time.Hour))

	sealed := mustSeal(t, k, "pw-1", []byte("delivered-password"))
	if err := k.Shred(ctx, "pw-1"); err != nil {
		t.Fatalf("Shred: %v", err)
	}
	_, err := k.Unseal(ctx, "pw-1", sealed)
	if !errors.Is(err, ErrShredded) {
		t.Fatalf("Unseal after Shred: error = %v, want ErrShredded", err)
	}
	if !strings.Contains(err.Error(), "2030-01-02T03:04:05Z") {
		t.Errorf("error %q does not say when the key was shredded", err)
	}

	// Idempotent: a second Shred succeeds and keeps the first time.
	if err := k.Shred(ctx, "pw-1"); err != nil {
		t.Fatalf("second Shred: %v", err)
	}
	var key []byte
	var shreddedAt int64
	if err := k.db.QueryRowContext(ctx, `SELECT key, shredded_at FROM keys WHERE key_id = 'pw-1'`).Scan(&key, &shreddedAt); err != nil {
		t.Fatal(err)
	}
	if key != nil {
		t.Errorf("tombstone still holds %d key bytes", len(key))
	}
	if shreddedAt != firstShred.UnixMilli() {
		t.Errorf("shredded_at = %d, want the first shred time %d", shreddedAt, firstShred.UnixMilli())
	}

	// Shredding one key leaves the others alone.
	other := mustSeal(t, k, "pw-2", []byte("pending-password"))
	if err := k.Shred(ctx, "pw-3-never-sealed"); err != nil {
		t.Fatalf("Shred(unknown id): %v", err)
	}
	if got, err := k.Unseal(ctx, "pw-2", other); err != nil || string(got) != "pending-password" {
		t.Fatalf("Unseal(pw-2) = %q, %v", got, err)
	}
}

func TestInvalidKeyID(t *testing.T) {
	k, _ := openTemp(t)
	ctx := t.Context()
	for _, keyID := range []string{"", strings.Repeat("x", MaxKeyIDLen+1)} {
		if _, err := k.Seal(ctx, keyID, []byte("p")); !errors.Is(err, ErrInvalidKeyID) {
			t.Errorf("Seal(len %d) error = %v, want ErrInvalidKeyID", len(keyID), err)
		}
		if _, err := k.Unseal(ctx, keyID, []byte("p")); !errors.Is(err, ErrInvalidKeyID) {
			t.Errorf("Unseal(len %d) error = %v, want ErrInvalidKeyID", len(keyID), err)
		}
		if err := k.Shred(ctx, keyID); !errors.Is(err, ErrInvalidKeyID) {
			t.Errorf("Shred(len %d) error = %v, want ErrInvalidKeyID", len(keyID), err)
		}
	}
	longest := strings.Repeat("y", MaxKeyIDLen)
	sealed := mustSeal(t, k, longest, []byte("p"))
	if _, err := k.Unseal(ctx, longest, sealed); err != nil {
		t.Errorf("Unseal(longest id): %v", err)
	}
}

func TestKeysSurviveReopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "keys.db")
	ctx := t.Context()

	k := mustOpen(t, path)
	keep := mustSeal(t, k, "keep", []byte("password-to-keep"))
	drop := mustSeal(t, k, "drop", []byte("password-to-drop"))
	mustClose(t, k)

	k = mustOpen(t, path)
	if got, err := k.Unseal(ctx, "keep", keep); err != nil || string(got) != "password-to-keep" {
		t.Fatalf("Unseal(keep) after reopen = %q, %v", got, err)
	}
	if got, err := k.Unseal(ctx, "drop", drop); err != nil || string(got) != "password-to-drop" {
		t.Fatalf("Unseal(drop) after reopen = %q, %v", got, err)
	}
	if err := k.Shred(ctx, "drop"); err != nil {
		t.Fatal(err)
	}
	mustClose(t, k)

	k = mustOpen(t, path)
	defer mustClose(t, k)
	if got, err := k.Unseal(ctx, "keep", keep); err != nil || string(got) != "password-to-keep" {
		t.Fatalf("Unseal(keep) after second reopen = %q, %v", got, err)
	}
	if _, err := k.Unseal(ctx, "drop", drop); !errors.Is(err, ErrShredded) {
		t.Fatalf("Unseal(drop) after reopen: error = %v, want ErrShredded", err)
	}
	if _, err := k.Seal(ctx, "drop", []byte("x")); !errors.Is(err, ErrKeyIDUsed) {
		t.Fatalf("Seal(drop) after reopen: error = %v, want ErrKeyIDUsed", err)
	}
}

func TestClosedAndCancelled(t *testing.T) {
	ctx := t.Context()
	k, _ := openTemp(t)

	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := k.Seal(cancelled, "c", []byte("p")); !errors.Is(err, context.Canceled) {
		t.Fatalf("Seal(cancelled ctx) error = %v, want context.Canceled", err)
	}
	// A Seal that failed before storing anything left the id unused.
	sealed := mustSeal(t, k, "c", []byte("p"))

	mustClose(t, k)
	if _, err := k.Seal(ctx, "d", []byte("p")); err == nil {
		t.Error("Seal on a closed store succeeded")
	}
	if _, err := k.Unseal(ctx, "c", sealed); err == nil {
		t.Error("Unseal on a closed store succeeded")
	}
	if err := k.Shred(ctx, "c"); err == nil {
		t.Error("Shred on a closed store succeeded")
	}
}

func TestConcurrentUse(t *testing.T) {
	k, _ := openTemp(t)
	ctx := t.Context()
	const workers, perWorker = 8, 25
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Go(func() {
			for i := range perWorker {
				keyID := fmt.Sprintf("w%d-%d", w, i)
				pw := []byte("password-" + keyID)
				sealed, err := k.Seal(ctx, keyID, pw)
				if err != nil {
					errs <- err
					return
				}
				got, err := k.Unseal(ctx, keyID, sealed)
				if err != nil || !bytes.Equal(got, pw) {
					errs <- fmt.Errorf("Unseal(%s) = %q, %v", keyID, got, err)
					return
				}
				if i%2 == 0 {
					if err := k.Shred(ctx, keyID); err != nil {
						errs <- err
						return
					}
				}
			}
		})
	}
	// Everybody races for the same id: exactly one Seal may win.
	var won sync.WaitGroup
	results := make(chan error, workers)
	for range workers {
		won.Go(func() {
			_, err := k.Seal(ctx, "contended", []byte("p"))
			results <- err
		})
	}
	wg.Wait()
	won.Wait()
	close(errs)
	close(results)
	for err := range errs {
		t.Error(err)
	}
	var ok int
	for err := range results {
		switch {
		case err == nil:
			ok++
		case !errors.Is(err, ErrKeyIDUsed):
			t.Errorf("contended Seal: %v", err)
		}
	}
	if ok != 1 {
		t.Errorf("%d concurrent Seals of one key id succeeded, want 1", ok)
	}
}

func TestOpenCreatesPrivateFile(t *testing.T) {
	t.Run("new file and directory", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "data")
		path := filepath.Join(dir, "keys.db")
		k := mustOpen(t, path)
		defer mustClose(t, k)
		mustSeal(t, k, "a", []byte("p"))
		assertPerm(t, path, 0o600)
		assertPerm(t, dir, 0o700)
	})
	t.Run("existing loose permissions are tightened", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "keys.db")
		if err := os.WriteFile(path, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(path, 0o644); err != nil { // defeat the umask
			t.Fatal(err)
		}
		k := mustOpen(t, path)
		defer mustClose(t, k)
		assertPerm(t, path, 0o600)
	})
}

func assertPerm(t *testing.T, path string, want os.FileMode) {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if got := fi.Mode().Perm(); got != want {
		t.Errorf("%s has mode %#o, want %#o", path, got, want)
	}
}

func TestOpenSettings(t *testing.T) {
	k, _ := openTemp(t)
	for pragma, want := range map[string]string{
		"journal_mode":   "delete",
		"secure_delete":  "1",
		"synchronous":    "2", // FULL
		"locking_mode":   "normal",
		"application_id": fmt.Sprint(applicationID),
		"user_version":   fmt.Sprint(schemaVersion),
	} {
		var got string
		if err := k.db.QueryRowContext(t.Context(), "PRAGMA "+pragma).Scan(&got); err != nil {
			t.Fatal(err)
		}
		if !strings.EqualFold(got, want) {
			t.Errorf("PRAGMA %s = %q, want %q", pragma, got, want)
		}
	}
}

func TestOpenRejectsBadFiles(t *testing.T) {
	ctx := t.Context()
	tests := []struct {
		name  string
		setup func(t *testing.T, path string)
		want  error // nil: any error will do
	}{
		{
			name: "garbage",
			setup: func(t *testing.T, path string) {
				garbage := bytes.Repeat([]byte("this is not a sqlite database. "), 200)
				if err := os.WriteFile(path, garbage, 0o600); err != nil {
					t.Fatal(err)
				}
			},
			want: ErrCorrupt,
		},
		{
			name: "damaged page",
			setup: func(t *testing.T, path string) {
				k := mustOpen(t, path)
				for i := range 300 {
					mustSeal(t, k, fmt.Sprintf("key-%04d", i), []byte("p"))
				}
				mustClose(t, k)
				f, err := os.OpenFile(path, os.O_RDWR, 0)
				if err != nil {
					t.Fatal(err)
				}
				defer f.Close()
				var pageSize int64 = 4096
				if _, err := f.WriteAt(bytes.Repeat([]byte{0xa5}, int(pageSize)), 2*pageSize); err != nil {
					t.Fatal(err)
				}
			},
			want: ErrCorrupt,
		},
		{
			name: "another application's database in WAL mode",
			setup: func(t *testing.T, path string) {
				db := rawDB(t, path, "journal_mode(WAL)")
				if _, err := db.Exec(`CREATE TABLE events (id INTEGER PRIMARY KEY, data BLOB)`); err != nil {
					t.Fatal(err)
				}
				if err := db.Close(); err != nil {
					t.Fatal(err)
				}
			},
			want: ErrNotKeyStore,
		},
		{
			name: "newer schema version",
			setup: func(t *testing.T, path string) {
				mustClose(t, mustOpen(t, path))
				db := rawDB(t, path)
				if _, err := db.Exec(`PRAGMA user_version = 2`); err != nil {
					t.Fatal(err)
				}
				if err := db.Close(); err != nil {
					t.Fatal(err)
				}
			},
		},
		{
			name: "directory",
			setup: func(t *testing.T, path string) {
				if err := os.Mkdir(path, 0o700); err != nil {
					t.Fatal(err)
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "keys.db")
			tt.setup(t, path)
			before, _ := os.ReadFile(path)

			k, err := Open(ctx, path)
			if err == nil {
				_ = k.Close()
				t.Fatal("Open succeeded")
			}
			if tt.want != nil && !errors.Is(err, tt.want) {
				t.Errorf("Open error = %v, want %v", err, tt.want)
			}
			if !strings.Contains(err.Error(), path) {
				t.Errorf("Open error %q does not name the file %s", err, path)
			}
			if after, _ := os.ReadFile(path); !bytes.Equal(before, after) {
				t.Error("Open modified a file it rejected")
			}
		})
	}

	if _, err := Open(ctx, ""); err == nil {
		t.Error("Open(\"\") succeeded")
	}
}

// rawDB opens path with the driver directly, bypassing the package.
func rawDB(t *testing.T, path string, pragmas ...string) *sql.DB {
	t.Helper()
	dsn := path
	for i, p := range pragmas {
		sep := "&"
		if i == 0 {
			sep = "?"
		}
		dsn += sep + "_pragma=" + p
	}
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		t.Fatal(err)
	}
	db.SetMaxOpenConns(1)
	return db
}

func TestHas_OnlyLiveKeys(t *testing.T) {
	// Given a key file with a sealed key and a shredded one
	k, _ := openTemp(t)
	ctx := t.Context()
	mustSeal(t, k, "pw-live", []byte("secret"))
	mustSeal(t, k, "pw-gone", []byte("secret"))
	if err := k.Shred(ctx, "pw-gone"); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		keyID string
		want  bool
	}{{"pw-live", true}, {"pw-gone", false}, {"pw-never", false}} {
		// When asked, then only the live key is there
		got, err := k.Has(ctx, tt.keyID)
		if err != nil || got != tt.want {
			t.Errorf("Has(%q) = %v, %v; want %v", tt.keyID, got, err, tt.want)
		}
	}
	if _, err := k.Has(ctx, ""); !errors.Is(err, ErrInvalidKeyID) {
		t.Errorf("Has(\"\") = %v, want ErrInvalidKeyID", err)
	}
}
