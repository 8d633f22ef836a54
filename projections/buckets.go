package projections

import (
	"cmp"
	"context"
	"database/sql"
	"fmt"
	"hash/maphash"
	"maps"
	"slices"

	json "github.com/goccy/go-json"
)

// buckets stores a view's rows in the views file grouped in a fixed number
// of buckets, one SQLite row per bucket holding a JSON array of the view's
// rows sorted by key. A change rewrites only its bucket; a rebuild writes a
// few thousand blobs instead of a row per user and webhook (writing rows one
// by one made the write phase of a rebuild slower than reading the events).
type buckets[K cmp.Ordered, R any] struct {
	view string
	n    uint32
	hash func(K) uint32
	rows map[K]R
	// dirty holds the buckets changed since the last commit. It is nil
	// while none of the rows is in the file (a new state, which loadAll
	// fills or a rebuild writes whole): every bucket is then to be
	// written, and keeping the set would cost a map write per event.
	dirty map[uint32]struct{}
	// stored is the sum of each bucket as committed to the file, written
	// the sums of what the transaction not yet committed wrote (the zero
	// sum for a deleted bucket). A rebuild leaves alone the buckets whose
	// content it finds unchanged.
	stored, written map[uint32]sum
	// appendRow appends a row as written: its JSON, byte for byte what
	// earlier versions wrote with the JSON encoder. Written by hand since
	// encoding the rows is most of a rebuild's write phase. load reads a
	// row back.
	appendRow func(b []byte, k K, r R) ([]byte, error)
	load      func(json.RawMessage) (K, R, error)
}

// newBuckets makes an empty view of n buckets with room for size rows.
func newBuckets[K cmp.Ordered, R any](view string, n uint32, size int, hash func(K) uint32, appendRow func([]byte, K, R) ([]byte, error), load func(json.RawMessage) (K, R, error)) *buckets[K, R] {
	return &buckets[K, R]{view: view, n: n, hash: hash, rows: make(map[K]R, size), appendRow: appendRow, load: load,
		stored: map[uint32]sum{}, written: map[uint32]sum{}}
}

// sum identifies a bucket's content: its length and a 64-bit hash of it.
type sum struct {
	hash uint64
	n    int
}

// sumSeed seeds the hash of sums. Sums are never stored, so a seed per
// process does; it is set once and never changes.
var sumSeed = maphash.MakeSeed()

func sumOf(blob []byte) sum { return sum{maphash.Bytes(sumSeed, blob), len(blob)} }

// sums returns the sums of the buckets in the file. It is read by a
// rebuild, which holds the view's lock.
func (b *buckets[K, R]) sums() map[uint32]sum { return b.stored }

// wrote records that bucket bk was written with content s (zero: deleted)
// in the transaction under way.
func (b *buckets[K, R]) wrote(bk uint32, s sum) { b.written[bk] = s }

func hashContact[K ~uint64](k K) uint32 { return uint32(k) }

// hashString is 32-bit FNV-1a, the hash/fnv one (the bucket of a stored row
// depends on it), computed inline: a hash.Hash and the copy of the string
// to write to it cost two allocations per webhook event.
func hashString(k string) uint32 {
	const (
		offset32 = 2166136261
		prime32  = 16777619
	)
	h := uint32(offset32)
	for i := 0; i < len(k); i++ {
		h ^= uint32(k[i])
		h *= prime32
	}
	return h
}

func (b *buckets[K, R]) bucket(k K) uint32 { return b.hash(k) % b.n }

func (b *buckets[K, R]) get(k K) (R, bool) {
	r, ok := b.rows[k]
	return r, ok
}

// put stores a row and marks its bucket changed.
func (b *buckets[K, R]) put(k K, r R) {
	b.rows[k] = r
	b.touch(k)
}

// touch marks the bucket of a row changed in place.
func (b *buckets[K, R]) touch(k K) {
	if b.dirty != nil {
		b.dirty[b.bucket(k)] = struct{}{}
	}
}

func (b *buckets[K, R]) del(k K) {
	if _, ok := b.rows[k]; !ok {
		return
	}
	delete(b.rows, k)
	b.touch(k)
}

const (
	upsertBucket = `INSERT INTO view_buckets(view, bucket, rows) VALUES(?, ?, ?)
		ON CONFLICT(view, bucket) DO UPDATE SET rows = excluded.rows`
	deleteBucket = `DELETE FROM view_buckets WHERE view = ? AND bucket = ?`
)

// encode appends one bucket's rows to dst as a JSON array, in key order.
func (b *buckets[K, R]) encode(dst []byte, keys []K) ([]byte, error) {
	slices.Sort(keys)
	dst = append(dst, '[')
	for i, k := range keys {
		if i > 0 {
			dst = append(dst, ',')
		}
		var err error
		if dst, err = b.appendRow(dst, k, b.rows[k]); err != nil {
			return nil, err
		}
	}
	return append(dst, ']'), nil
}

// group lists the keys of the rows in each bucket wanted (all when want is
// nil). One pass over the rows: cheaper than keeping an index up to date on
// every change.
func (b *buckets[K, R]) group(want map[uint32]struct{}) map[uint32][]K {
	out := map[uint32][]K{}
	for bk := range want {
		out[bk] = nil
	}
	for k := range b.rows {
		bk := b.bucket(k)
		if want != nil {
			if _, ok := want[bk]; !ok {
				continue
			}
		}
		out[bk] = append(out[bk], k)
	}
	return out
}

func (b *buckets[K, R]) writeBucket(ctx context.Context, up, del *sql.Stmt, bk uint32, keys []K) error {
	if len(keys) == 0 {
		_, err := del.ExecContext(ctx, b.view, int64(bk))
		b.wrote(bk, sum{})
		return err
	}
	blob, err := b.encode(nil, keys)
	if err != nil {
		return fmt.Errorf("encode bucket %d: %w", bk, err)
	}
	_, err = up.ExecContext(ctx, b.view, int64(bk), blob)
	b.wrote(bk, sumOf(blob))
	return err
}

func (b *buckets[K, R]) statements(ctx context.Context, tx *sql.Tx) (up, del *sql.Stmt, err error) {
	if up, err = tx.PrepareContext(ctx, upsertBucket); err != nil {
		return nil, nil, err
	}
	if del, err = tx.PrepareContext(ctx, deleteBucket); err != nil {
		up.Close()
		return nil, nil, err
	}
	return up, del, nil
}

// flush writes the changed buckets.
func (b *buckets[K, R]) flush(ctx context.Context, tx *sql.Tx) error {
	if b.dirty != nil && len(b.dirty) == 0 {
		return nil
	}
	clear(b.written) // what an earlier, failed transaction wrote
	up, del, err := b.statements(ctx, tx)
	if err != nil {
		return err
	}
	defer up.Close()
	defer del.Close()
	for bk, keys := range b.group(b.dirty) {
		if err := b.writeBucket(ctx, up, del, bk, keys); err != nil {
			return fmt.Errorf("write %s bucket %d: %w", b.view, bk, err)
		}
	}
	return nil
}

// committed forgets the changes once the transaction that wrote them
// committed; until then a failed commit is written again at the next flush.
// A new state's rows are all in the file from then on: it starts keeping
// the set of changed buckets.
func (b *buckets[K, R]) committed() {
	for bk, s := range b.written {
		if s == (sum{}) {
			delete(b.stored, bk)
		} else {
			b.stored[bk] = s
		}
	}
	clear(b.written)
	if b.dirty == nil {
		b.dirty = map[uint32]struct{}{}
		return
	}
	clear(b.dirty)
}

// encoded is one bucket ready to be written.
type encoded struct {
	view   string
	bucket uint32
	blob   []byte
	sum    sum
	// unchanged is true when the file holds this content already.
	unchanged bool
	// wrote records the bucket as written once it is.
	wrote func(bk uint32, s sum)
}

// encodeAll sends the non-empty buckets numbered part modulo parts, encoded,
// to out, each marked unchanged if inFile (the sums of the buckets in the
// file) has its sum, in bucket order: SQLite inserts them in half the time it takes in
// random order, as each insert then lands next to the one before. Callers
// run every part at once to use every core while the file is written, and
// the parts' buckets interleave. Each bucket is encoded into a buffer from
// free when there is one: the writer hands them back once written, which
// spares allocating and growing one per bucket.
func (b *buckets[K, R]) encodeAll(part, parts uint32, inFile map[uint32]sum, out chan<- encoded, free <-chan []byte) error {
	groups := map[uint32][]K{}
	for k := range b.rows {
		if bk := b.bucket(k); bk%parts == part {
			groups[bk] = append(groups[bk], k)
		}
	}
	for _, bk := range slices.Sorted(maps.Keys(groups)) {
		var buf []byte
		select {
		case buf = <-free:
		default:
		}
		blob, err := b.encode(buf[:0], groups[bk])
		if err != nil {
			return fmt.Errorf("encode %s bucket %d: %w", b.view, bk, err)
		}
		s := sumOf(blob)
		out <- encoded{view: b.view, bucket: bk, blob: blob, sum: s, unchanged: inFile[bk] == s, wrote: b.wrote}
	}
	return nil
}

// loadAll reads the view's buckets.
func (b *buckets[K, R]) loadAll(ctx context.Context, db *sql.DB) error {
	rows, err := db.QueryContext(ctx, "SELECT bucket, rows FROM view_buckets WHERE view = ?", b.view)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		var bk int64
		var blob []byte
		if err := rows.Scan(&bk, &blob); err != nil {
			return err
		}
		var items []json.RawMessage
		if err := json.Unmarshal(blob, &items); err != nil {
			return fmt.Errorf("bucket %d: %w", bk, err)
		}
		for _, raw := range items {
			k, r, err := b.load(raw)
			if err != nil {
				return fmt.Errorf("bucket %d: %w", bk, err)
			}
			if uint32(bk) != b.bucket(k) {
				return fmt.Errorf("bucket %d holds a row of bucket %d", bk, b.bucket(k))
			}
			b.put(k, r)
		}
		b.stored[uint32(bk)] = sumOf(blob)
	}
	if err := rows.Err(); err != nil {
		return err
	}
	b.committed()
	return nil
}
