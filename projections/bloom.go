package projections

import "hash/maphash"

// bloom is a Bloom filter of keys: has is false for a key never added, and
// true for one added (and, rarely, for one not). A rebuild uses it to skip
// looking up rows that cannot be in its new file yet.
type bloom struct {
	bits []uint64
	seed maphash.Seed
}

// newBloom makes a filter for about n keys at well under 1 % false
// positives, no smaller than 1 MiB and no bigger than 64 MiB.
func newBloom(n int) *bloom {
	words := min(max(n*12/64+1, 1<<17), 1<<23)
	return &bloom{bits: make([]uint64, words), seed: maphash.MakeSeed()}
}

// idKey is the key of a row keyed by a number in the view numbered view.
func (f *bloom) idKey(view int, id uint64) uint64 {
	return maphash.Comparable(f.seed, [2]uint64{uint64(view), id})
}

// strKey is the key of a row keyed by a string (a webhook's receipt).
func (f *bloom) strKey(s string) uint64 { return maphash.String(f.seed, s) }

// probes is how many bits a key sets: double hashing of one 64-bit hash.
const probes = 6

func (f *bloom) add(h uint64) {
	h1, h2 := h, h>>32|h<<32|1
	n := uint64(len(f.bits)) * 64
	for range probes {
		i := h1 % n
		f.bits[i/64] |= 1 << (i % 64)
		h1 += h2
	}
}

func (f *bloom) has(h uint64) bool {
	h1, h2 := h, h>>32|h<<32|1
	n := uint64(len(f.bits)) * 64
	for range probes {
		i := h1 % n
		if f.bits[i/64]&(1<<(i%64)) == 0 {
			return false
		}
		h1 += h2
	}
	return true
}
