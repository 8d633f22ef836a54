package funnelkit

// SetMaxTagPages lowers the page bound of Tags for a test and returns a
// function that restores it.
func SetMaxTagPages(n int) (restore func()) {
	old := maxTagPages
	maxTagPages = n
	return func() { maxTagPages = old }
}
