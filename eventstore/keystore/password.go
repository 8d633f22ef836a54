package keystore

import (
	"crypto/rand"
	"fmt"
	"io"
)

// PasswordAlphabet is the set of characters GeneratePassword draws from:
// ASCII letters, digits and the four characters that RFC 3986 leaves
// unreserved in URLs ("-", ".", "_", "~"), none of which needs escaping in a
// URL, a query string or an application/x-www-form-urlencoded form.
const PasswordAlphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ" +
	"abcdefghijklmnopqrstuvwxyz" +
	"0123456789" +
	"-._~"

// MinPasswordLen is the shortest password GeneratePassword produces.
const MinPasswordLen = 16

// GeneratePassword returns a password of n characters drawn independently and
// uniformly from PasswordAlphabet using crypto/rand (about 6.04 bits per
// character, so 16 characters carry about 96 bits). It returns an error if
// n < MinPasswordLen.
func GeneratePassword(n int) (string, error) {
	return generatePassword(rand.Reader, n)
}

// generatePassword maps random bytes from r to alphabet characters by
// rejection sampling: bytes at or above the largest multiple of the alphabet
// size that fits in a byte are discarded, so every character is equally
// likely.
func generatePassword(r io.Reader, n int) (string, error) {
	if n < MinPasswordLen {
		return "", fmt.Errorf("keystore: generate password: length %d is shorter than the minimum %d", n, MinPasswordLen)
	}
	const (
		size  = len(PasswordAlphabet)
		limit = 256 - 256%size // 198 for 66 characters
	)
	out := make([]byte, 0, n)
	defer func() { clear(out) }()
	// About 77% of bytes are accepted; ask for a little extra so that one
	// read usually suffices.
	buf := make([]byte, n+n/2+8)
	defer clear(buf)
	for len(out) < n {
		if _, err := io.ReadFull(r, buf); err != nil {
			return "", fmt.Errorf("keystore: generate password: read random bytes: %w", err)
		}
		for _, b := range buf {
			if int(b) >= limit {
				continue
			}
			out = append(out, PasswordAlphabet[int(b)%size])
			if len(out) == n {
				break
			}
		}
	}
	return string(out), nil
}
