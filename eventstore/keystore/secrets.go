package keystore

import (
	"context"
	"fmt"

	"golang.org/x/crypto/bcrypt"
)

// Secrets makes the passwords of new users: generated from crypto/rand,
// hashed with bcrypt, sealed under a fresh key of the key store. It is the
// adapter behind domain.Secrets.
type Secrets struct {
	Keys *Keys
	// Length of generated passwords (at least MinPasswordLen).
	Length int
	// Cost is the bcrypt cost (bcrypt.DefaultCost when 0).
	Cost int
}

// NewPassword generates a password.
func (s Secrets) NewPassword() (string, error) {
	return GeneratePassword(max(s.Length, MinPasswordLen))
}

// Hash returns the bcrypt hash of a password.
func (s Secrets) Hash(password string) (string, error) {
	cost := s.Cost
	if cost == 0 {
		cost = bcrypt.DefaultCost
	}
	h, err := bcrypt.GenerateFromPassword([]byte(password), cost)
	if err != nil {
		return "", fmt.Errorf("bcrypt: %w", err)
	}
	return string(h), nil
}

// Seal stores a fresh key under keyID and seals the password with it.
func (s Secrets) Seal(ctx context.Context, keyID, password string) ([]byte, error) {
	return s.Keys.Seal(ctx, keyID, []byte(password))
}

// Shred destroys a key.
func (s Secrets) Shred(ctx context.Context, keyID string) error {
	return s.Keys.Shred(ctx, keyID)
}
