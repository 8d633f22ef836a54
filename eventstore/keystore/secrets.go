package keystore

import (
	"context"
	"fmt"
	"runtime"

	"golang.org/x/crypto/bcrypt"
)

// Secrets makes the passwords of new users: generated from crypto/rand,
// hashed with bcrypt (on Hasher's bounded pool), sealed under a fresh key
// of the key store. It is the adapter behind domain.Secrets.
type Secrets struct {
	Keys *Keys
	// Length of generated passwords (at least MinPasswordLen).
	Length int
	// Hasher hashes the passwords; nil hashes at bcrypt.DefaultCost with
	// no bound on how many at once.
	Hasher *Hasher
}

// NewPassword generates a password.
func (s Secrets) NewPassword() (string, error) {
	return GeneratePassword(max(s.Length, MinPasswordLen))
}

// Hash returns the bcrypt hash of a password.
func (s Secrets) Hash(password string) (string, error) {
	if s.Hasher == nil {
		return hash(password, bcrypt.DefaultCost)
	}
	return s.Hasher.Hash(password)
}

// Seal stores a fresh key under keyID and seals the password with it.
func (s Secrets) Seal(ctx context.Context, keyID, password string) ([]byte, error) {
	return s.Keys.Seal(ctx, keyID, []byte(password))
}

// Shred destroys a key.
func (s Secrets) Shred(ctx context.Context, keyID string) error {
	return s.Keys.Shred(ctx, keyID)
}

// Bcrypt costs a Hasher accepts: bcrypt's own bounds. DefaultHashCost is
// bcrypt's default: 2^10 rounds, about 57 ms of one core per hash on a
// quiet 2-core machine (measure with BenchmarkHash; docs/benchmarks.md).
const (
	MinHashCost     = bcrypt.MinCost
	MaxHashCost     = bcrypt.MaxCost
	DefaultHashCost = bcrypt.DefaultCost
)

// Hasher hashes passwords with bcrypt on a bounded pool: at most Workers
// hashes run at once, the others wait for a free worker. A burst of new
// users then uses the cores it is given and no more, and hashing, which
// is most of a new user's CPU, cannot crowd out the rest of processing.
// A Hasher is safe for concurrent use.
type Hasher struct {
	cost  int
	slots chan struct{}
}

// NewHasher is a pool of workers hashing at cost (MinHashCost to
// MaxHashCost; each step doubles the work). workers 0 is GOMAXPROCS.
func NewHasher(cost, workers int) (*Hasher, error) {
	if cost < MinHashCost || cost > MaxHashCost {
		return nil, fmt.Errorf("password hash cost %d is out of range: bcrypt takes %d to %d (each step doubles the CPU of every new user; %d is the default)", cost, MinHashCost, MaxHashCost, DefaultHashCost)
	}
	if workers < 0 {
		return nil, fmt.Errorf("password hash workers %d must be 0 (one per CPU) or more", workers)
	}
	if workers == 0 {
		workers = runtime.GOMAXPROCS(0)
	}
	return &Hasher{cost: cost, slots: make(chan struct{}, workers)}, nil
}

// Cost is the bcrypt cost of the hashes h makes.
func (h *Hasher) Cost() int { return h.cost }

// Workers is how many hashes h makes at once.
func (h *Hasher) Workers() int { return cap(h.slots) }

// Hash returns the bcrypt hash of password once a worker is free.
func (h *Hasher) Hash(password string) (string, error) {
	h.slots <- struct{}{}
	defer func() { <-h.slots }()
	return hash(password, h.cost)
}

func hash(password string, cost int) (string, error) {
	b, err := bcrypt.GenerateFromPassword([]byte(password), cost)
	if err != nil {
		// bcrypt's errors never contain the password.
		return "", fmt.Errorf("bcrypt: %w", err)
	}
	return string(b), nil
}
