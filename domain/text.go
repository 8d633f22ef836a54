package domain

import "unicode/utf8"

// Truncate shortens s to at most its first n bytes followed by "…" when it
// is longer, for quoting input in messages and logs. It counts bytes, not
// characters, as the messages it serves always have, but never cuts a
// UTF-8 character in two: the cut moves back to the start of the
// character it would split, so a message stays valid UTF-8.
func Truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	cut := max(n, 0)
	for cut > 0 && cut < len(s) && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "…"
}
