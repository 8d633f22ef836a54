package domain

// Truncate shortens s to its first n bytes followed by "…" when it is
// longer, for quoting input in messages and logs. It counts bytes, not
// characters, as the messages it serves always have.
func Truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
