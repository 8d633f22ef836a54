package keystore

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
)

func TestGeneratePasswordLengthAndAlphabet(t *testing.T) {
	for _, n := range []int{MinPasswordLen, 17, 24, 32, 64, 257} {
		pw, err := GeneratePassword(n)
		if err != nil {
			t.Fatalf("GeneratePassword(%d): %v", n, err)
		}
		if len(pw) != n {
			t.Errorf("GeneratePassword(%d) has length %d", n, len(pw))
		}
		for i, r := range pw {
			if !strings.ContainsRune(PasswordAlphabet, r) {
				t.Errorf("GeneratePassword(%d)[%d] = %q, not in the alphabet", n, i, r)
			}
		}
	}
}

func TestGeneratePasswordRejectsShortLengths(t *testing.T) {
	for _, n := range []int{-1, 0, 1, 8, MinPasswordLen - 1} {
		pw, err := GeneratePassword(n)
		if err == nil {
			t.Errorf("GeneratePassword(%d) = %q, want an error", n, pw)
		}
	}
}

func TestGeneratePasswordUnique(t *testing.T) {
	seen := make(map[string]bool, 1000)
	for range 1000 {
		pw, err := GeneratePassword(MinPasswordLen)
		if err != nil {
			t.Fatal(err)
		}
		if seen[pw] {
			t.Fatalf("GeneratePassword returned %q twice", pw)
		}
		seen[pw] = true
	}
}

func TestPasswordAlphabetIsSafe(t *testing.T) {
	if len(PasswordAlphabet) != 66 {
		t.Errorf("alphabet has %d characters, want 66", len(PasswordAlphabet))
	}
	seen := map[rune]bool{}
	for _, r := range PasswordAlphabet {
		if seen[r] {
			t.Errorf("alphabet repeats %q", r)
		}
		seen[r] = true
		unreserved := r >= 'A' && r <= 'Z' || r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || strings.ContainsRune("-._~", r)
		if !unreserved {
			t.Errorf("alphabet character %q is not URL-unreserved", r)
		}
	}
}

// cycleReader yields 0, 1, ..., 255, 0, 1, ... forever.
type cycleReader struct{ next byte }

func (c *cycleReader) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = c.next
		c.next++
	}
	return len(p), nil
}

// TestGeneratePasswordIsUnbiased feeds every byte value equally often and
// checks that every character comes out exactly equally often: rejection
// sampling leaves no modulo bias.
func TestGeneratePasswordIsUnbiased(t *testing.T) {
	const size = len(PasswordAlphabet)
	const perCycle = 256 - 256%size // accepted bytes per 256 input bytes
	const cycles = 3
	pw, err := generatePassword(&cycleReader{}, perCycle*cycles)
	if err != nil {
		t.Fatal(err)
	}
	counts := map[rune]int{}
	for _, r := range pw {
		counts[r]++
	}
	want := perCycle * cycles / size
	for _, r := range PasswordAlphabet {
		if counts[r] != want {
			t.Errorf("character %q appeared %d times, want %d", r, counts[r], want)
		}
	}
}

func TestGeneratePasswordReadError(t *testing.T) {
	_, err := generatePassword(bytes.NewReader(make([]byte, 4)), MinPasswordLen)
	if err == nil || !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("error = %v, want io.ErrUnexpectedEOF", err)
	}
}
