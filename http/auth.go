package http

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"fmt"
	"strings"
)

// Secret is a shared secret (access key, admin token) kept only as its
// SHA-256 digest, compared in constant time.
type Secret struct {
	sum [sha256.Size]byte
	set bool
}

// NewSecret makes a Secret from its plain text.
func NewSecret(plain string) Secret {
	return Secret{sum: sha256.Sum256([]byte(plain)), set: plain != ""}
}

// SecretFromDigest makes a Secret from a hex SHA-256 digest, as stored.
func SecretFromDigest(hexDigest string) (Secret, error) {
	b, err := hex.DecodeString(strings.TrimSpace(hexDigest))
	if err != nil || len(b) != sha256.Size {
		return Secret{}, fmt.Errorf("not a hex SHA-256 digest")
	}
	var s Secret
	copy(s.sum[:], b)
	s.set = true
	return s, nil
}

// Digest is the hex SHA-256 digest to store.
func (s Secret) Digest() string { return hex.EncodeToString(s.sum[:]) }

// Matches compares a candidate in constant time. An unset secret matches
// nothing.
func (s Secret) Matches(candidate string) bool {
	sum := sha256.Sum256([]byte(candidate))
	return subtle.ConstantTimeCompare(sum[:], s.sum[:]) == 1 && s.set
}

// String never shows the secret.
func (s Secret) String() string { return "[redacted]" }
