package keystore

import (
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"

	"golang.org/x/crypto/bcrypt"
)

func TestHasher_HashesAtItsCost(t *testing.T) {
	h, err := NewHasher(MinHashCost, 0)
	if err != nil {
		t.Fatal(err)
	}
	if h.Workers() != runtime.GOMAXPROCS(0) {
		t.Errorf("workers = %d, want GOMAXPROCS %d", h.Workers(), runtime.GOMAXPROCS(0))
	}
	got, err := Secrets{Hasher: h}.Hash("correct horse battery staple")
	if err != nil {
		t.Fatal(err)
	}
	if err := bcrypt.CompareHashAndPassword([]byte(got), []byte("correct horse battery staple")); err != nil {
		t.Errorf("the hash does not verify: %v", err)
	}
	if c, err := bcrypt.Cost([]byte(got)); err != nil || c != MinHashCost {
		t.Errorf("hash cost = %d, %v; want %d", c, err, MinHashCost)
	}
	if strings.Contains(got, "horse") {
		t.Error("the hash holds the password")
	}
}

func TestHasher_ConcurrentHashesAllVerify(t *testing.T) {
	h, err := NewHasher(MinHashCost, 2)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			pw := "password-" + strconv.Itoa(i)
			got, err := h.Hash(pw)
			if err != nil {
				t.Error(err)
				return
			}
			if err := bcrypt.CompareHashAndPassword([]byte(got), []byte(pw)); err != nil {
				t.Errorf("hash %d does not verify: %v", i, err)
			}
		})
	}
	wg.Wait()
}

func TestNewHasher_RefusesACostOutOfRangeAndSaysTheRange(t *testing.T) {
	for _, cost := range []int{0, 3, 32, -1} {
		_, err := NewHasher(cost, 0)
		if err == nil || !strings.Contains(err.Error(), "4 to 31") {
			t.Errorf("NewHasher(%d) = %v, want an error naming 4 to 31", cost, err)
		}
	}
	if _, err := NewHasher(DefaultHashCost, -1); err == nil {
		t.Error("NewHasher accepted -1 workers")
	}
}

// BenchmarkHash is the CPU of one new user's password hash (one core):
//
//	go test -run '^$' -bench BenchmarkHash -benchtime 20x ./eventstore/keystore/
func BenchmarkHash(b *testing.B) {
	for _, cost := range []int{MinHashCost, DefaultHashCost, DefaultHashCost + 2} {
		b.Run("cost="+strconv.Itoa(cost), func(b *testing.B) {
			for range b.N {
				if _, err := hash("Xy7-generated-password-24", cost); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
