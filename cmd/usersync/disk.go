package main

import (
	"context"
	"fmt"
	"strconv"
	"strings"
)

// byteSize is a flag value of bytes written with a unit: 64MiB, 1GiB,
// 512KiB, 100MB, or a plain number of bytes.
type byteSize uint64

var byteUnits = []struct {
	suffix string
	n      uint64
}{
	{"KIB", 1 << 10}, {"MIB", 1 << 20}, {"GIB", 1 << 30}, {"TIB", 1 << 40},
	{"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"TB", 1e12}, {"B", 1},
}

// Set parses s.
func (b *byteSize) Set(s string) error {
	t := strings.ToUpper(strings.TrimSpace(s))
	mult := uint64(1)
	for _, u := range byteUnits {
		if strings.HasSuffix(t, u.suffix) {
			t, mult = strings.TrimSpace(strings.TrimSuffix(t, u.suffix)), u.n
			break
		}
	}
	n, err := strconv.ParseUint(t, 10, 64)
	if err != nil || (mult > 1 && n > (1<<64-1)/mult) {
		return fmt.Errorf("%q is not a size: write a whole number with a unit, for example 64MiB, 1GiB or 0 (off)", s)
	}
	*b = byteSize(n * mult)
	return nil
}

// String prints the size with the largest binary unit that divides it.
func (b byteSize) String() string {
	for _, u := range []struct {
		suffix string
		n      uint64
	}{{"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}} {
		if b != 0 && uint64(b)%u.n == 0 {
			return fmt.Sprintf("%d%s", uint64(b)/u.n, u.suffix)
		}
	}
	return strconv.FormatUint(uint64(b), 10)
}

// diskGuard keeps a reserve of free space on the data disk: below it, new
// webhooks are refused (503, FunnelKit sends them again) so that the room
// left goes to what must still be recorded for the webhooks already
// accepted (their outcomes, retries, the process managers' events).
type diskGuard struct {
	dir     string
	reserve uint64
	// free returns the bytes free for an unprivileged user on dir's
	// file system; ok is false where it cannot be known.
	free func(dir string) (n uint64, ok bool, err error)
}

// check reports an error when the data disk has less than the reserve free.
func (g diskGuard) check(context.Context) error {
	if g.reserve == 0 {
		return nil
	}
	n, ok, err := g.free(g.dir)
	if err != nil {
		return fmt.Errorf("cannot read the free space of the data directory %s: %w", g.dir, err)
	}
	if !ok || n >= g.reserve {
		return nil
	}
	return fmt.Errorf("the data disk of %s has %s free, below --disk-reserve %s: new webhooks are refused until space is freed on that disk (or --disk-reserve is lowered)",
		g.dir, byteSize(n).human(), byteSize(g.reserve))
}

// human prints the size rounded to the unit that reads best.
func (b byteSize) human() string {
	switch {
	case b >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(b)/(1<<30))
	case b >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20))
	case b >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(b)/(1<<10))
	}
	return fmt.Sprintf("%d bytes", uint64(b))
}
