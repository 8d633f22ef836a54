package keystore

import (
	"bytes"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// secret is everything about one sealed password that must become
// unrecoverable once its key is shredded.
type secret struct {
	keyID    string
	password string
	key      []byte // raw key bytes, read from the table before shredding
	sealed   []byte
}

// readDirFiles returns the contents of every regular file in dir.
func readDirFiles(t *testing.T, dir string) map[string][]byte {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	files := make(map[string][]byte, len(entries))
	for _, e := range entries {
		if !e.Type().IsRegular() {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		files[e.Name()] = b
	}
	return files
}

// keyFragments splits a key into 8-byte pieces, so that a partially
// overwritten key is found as well as a whole one. A random 8-byte sequence
// turns up by chance in a file of a few hundred KiB with probability ~2^-45.
func keyFragments(key []byte) [][]byte {
	var out [][]byte
	for i := 0; i+8 <= len(key); i += 8 {
		out = append(out, key[i:i+8])
	}
	return out
}

// leaks reports where any fragment of key occurs in files.
func leaks(files map[string][]byte, key []byte) []string {
	var where []string
	for name, b := range files {
		for i, frag := range keyFragments(key) {
			if bytes.Contains(b, frag) {
				where = append(where, fmt.Sprintf("%s (fragment %d)", name, i))
			}
		}
	}
	slices.Sort(where)
	return where
}

func sealMany(t *testing.T, k *Keys, prefix string, n int, rng *rand.Rand) []secret {
	t.Helper()
	out := make([]secret, n)
	for i := range out {
		pw, err := GeneratePassword(24)
		if err != nil {
			t.Fatal(err)
		}
		// Random ids spread the inserts over the b-tree, causing page splits
		// that move cells around.
		keyID := fmt.Sprintf("%s-%016x", prefix, rng.Uint64())
		out[i] = secret{keyID: keyID, password: pw, sealed: mustSeal(t, k, keyID, []byte(pw))}
		out[i].key = rawKey(t, k, keyID)
	}
	return out
}

func shredAll(t *testing.T, k *Keys, secrets []secret, rng *rand.Rand) {
	t.Helper()
	order := rng.Perm(len(secrets))
	for _, i := range order {
		if err := k.Shred(t.Context(), secrets[i].keyID); err != nil {
			t.Fatalf("Shred(%s): %v", secrets[i].keyID, err)
		}
	}
}

// TestShredLeavesNoKeyMaterial is the crypto-shredding proof: after Shred and
// Close, no byte sequence of a shredded key is left in any file of the data
// directory, while keys that were not shredded are still there (so the scan
// would have found them).
func TestShredLeavesNoKeyMaterial(t *testing.T) {
	const n = 200
	scenarios := []struct {
		name string
		// run seals and shreds; it returns the shredded secrets and the
		// survivors.
		run func(t *testing.T, path string, rng *rand.Rand) (shredded, kept []secret)
	}{
		{
			name: "seal, close, reopen, shred",
			run: func(t *testing.T, path string, rng *rand.Rand) ([]secret, []secret) {
				k := mustOpen(t, path)
				doomed := sealMany(t, k, "doomed", n, rng)
				kept := sealMany(t, k, "kept", 20, rng)
				mustClose(t, k)

				// Control: before shredding, the scan finds every key and
				// no plaintext.
				files := readDirFiles(t, filepath.Dir(path))
				for _, s := range append(slices.Clone(doomed), kept...) {
					if len(leaks(files, s.key)) != len(keyFragments(s.key)) {
						t.Fatalf("control: key of %s not found intact before shredding; the scan proves nothing", s.keyID)
					}
				}
				assertNoPlaintext(t, files, append(slices.Clone(doomed), kept...))

				k = mustOpen(t, path)
				shredAll(t, k, doomed, rng)
				mustClose(t, k)
				return doomed, kept
			},
		},
		{
			name: "seal and shred in one session",
			run: func(t *testing.T, path string, rng *rand.Rand) ([]secret, []secret) {
				k := mustOpen(t, path)
				doomed := sealMany(t, k, "doomed", n, rng)
				kept := sealMany(t, k, "kept", 20, rng)
				shredAll(t, k, doomed, rng)
				mustClose(t, k)
				return doomed, kept
			},
		},
		{
			name: "interleaved seal and shred",
			run: func(t *testing.T, path string, rng *rand.Rand) ([]secret, []secret) {
				k := mustOpen(t, path)
				var doomed, kept []secret
				for range n / 10 {
					batch := sealMany(t, k, "doomed", 10, rng)
					kept = append(kept, sealMany(t, k, "kept", 1, rng)...)
					shredAll(t, k, batch, rng)
					doomed = append(doomed, batch...)
				}
				mustClose(t, k)
				return doomed, kept
			},
		},
	}
	for i, sc := range scenarios {
		t.Run(sc.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			path := filepath.Join(dir, "keys.db")
			rng := rand.New(rand.NewPCG(uint64(i), 42))

			shredded, kept := sc.run(t, path, rng)

			files := readDirFiles(t, dir)
			if names := slices.Sorted(maps.Keys(files)); !slices.Equal(names, []string{"keys.db"}) {
				t.Errorf("files left in the data directory: %v, want only keys.db", names)
			}
			for _, s := range shredded {
				if where := leaks(files, s.key); len(where) > 0 {
					t.Errorf("shredded key of %s still readable in %v", s.keyID, where)
				}
			}
			for _, s := range kept {
				if len(leaks(files, s.key)) != len(keyFragments(s.key)) {
					t.Errorf("control: unshredded key of %s not found intact", s.keyID)
				}
			}
			assertNoPlaintext(t, files, append(slices.Clone(shredded), kept...))

			// And through the API: shredded stays shredded, kept still opens.
			k := mustOpen(t, path)
			defer mustClose(t, k)
			for _, s := range shredded {
				if _, err := k.Unseal(t.Context(), s.keyID, s.sealed); !errors.Is(err, ErrShredded) {
					t.Fatalf("Unseal(%s) error = %v, want ErrShredded", s.keyID, err)
				}
			}
			for _, s := range kept {
				got, err := k.Unseal(t.Context(), s.keyID, s.sealed)
				if err != nil || string(got) != s.password {
					t.Fatalf("Unseal(%s) = %q, %v", s.keyID, got, err)
				}
			}
		})
	}
}

func assertNoPlaintext(t *testing.T, files map[string][]byte, secrets []secret) {
	t.Helper()
	for _, s := range secrets {
		for name, b := range files {
			if bytes.Contains(b, []byte(s.password)) {
				t.Errorf("plaintext password of %s found in %s", s.keyID, name)
			}
		}
	}
}

// TestScanDetectsLeakWithoutSecureDelete shows that the proof above is not
// vacuous: the same schema and the same "set key to NULL" update, run with
// secure_delete OFF, leave key bytes behind in the file.
func TestScanDetectsLeakWithoutSecureDelete(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "keys.db")
	db := rawDB(t, path, "journal_mode(DELETE)", "secure_delete(OFF)")
	ctx := t.Context()
	if _, err := db.ExecContext(ctx, schema); err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(7, 7))
	keys := make([][]byte, 200)
	for i := range keys {
		keys[i] = make([]byte, keySize)
		for j := range keys[i] {
			keys[i][j] = byte(rng.Uint32())
		}
		if _, err := db.ExecContext(ctx, `INSERT INTO keys (key_id, key, created_at) VALUES (?, ?, 0)`,
			fmt.Sprintf("k-%016x", rng.Uint64()), keys[i]); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := db.ExecContext(ctx, `UPDATE keys SET key = NULL, shredded_at = 1`); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	files := readDirFiles(t, dir)
	var leaked int
	for _, key := range keys {
		if len(leaks(files, key)) > 0 {
			leaked++
		}
	}
	if leaked == 0 {
		t.Fatal("no key bytes left behind even without secure_delete; the shredding proof would not detect a leak")
	}
	t.Logf("without secure_delete, %d of %d 'deleted' keys were still in the file", leaked, len(keys))
}
