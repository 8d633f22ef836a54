package domain

import (
	"testing"
	"unicode/utf8"
)

func TestTruncate(t *testing.T) {
	tests := []struct {
		name string
		s    string
		n    int
		want string
	}{
		{"shorter", "add", 40, "add"},
		{"exactly n", "abcd", 4, "abcd"},
		{"longer", "abcdef", 4, "abcd…"},
		{"empty", "", 3, ""},
		{"zero", "abc", 0, "…"},
		{"negative", "abc", -1, "…"},
		{"cut before a two-byte character", "abé", 3, "ab…"},
		{"cut after a two-byte character", "abéd", 4, "abé…"},
		{"cut inside a four-byte character", "a😀b", 3, "a…"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Truncate(tt.s, tt.n)
			if got != tt.want {
				t.Errorf("Truncate(%q, %d) = %q, want %q", tt.s, tt.n, got, tt.want)
			}
			if !utf8.ValidString(got) {
				t.Errorf("Truncate(%q, %d) = %q: not valid UTF-8", tt.s, tt.n, got)
			}
		})
	}
}
