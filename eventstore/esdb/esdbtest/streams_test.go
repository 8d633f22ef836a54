package esdbtest_test

import (
	"bytes"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/EventStore/EventStore-Client-Go/v4/esdb"

	"github.com/usersync/usersync/eventstore/esdb/esdbtest"
)

func TestAppend_ExpectedVersions(t *testing.T) {
	srv := esdbtest.New(t)
	c := newClient(t, srv)
	tests := []struct {
		name     string
		existing int // events in the stream before the append
		exp      esdb.ExpectedRevision
		wantErr  bool
		wantNext uint64
	}{
		{"any on a new stream", 0, esdb.Any{}, false, 0},
		{"any on an existing stream", 2, esdb.Any{}, false, 2},
		{"no_stream on a new stream", 0, esdb.NoStream{}, false, 0},
		{"no_stream on an existing stream", 1, esdb.NoStream{}, true, 0},
		{"stream_exists on a new stream", 0, esdb.StreamExists{}, true, 0},
		{"stream_exists on an existing stream", 1, esdb.StreamExists{}, false, 1},
		{"exact revision at the end", 3, esdb.Revision(2), false, 3},
		{"exact revision behind the end", 3, esdb.Revision(1), true, 0},
		{"exact revision ahead of the end", 1, esdb.Revision(5), true, 0},
		{"exact revision on a new stream", 0, esdb.Revision(0), true, 0},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			stream := "exp-" + strings.ReplaceAll(tt.name, " ", "-") + "-" + string(rune('a'+i))
			if tt.existing > 0 {
				mustAppend(t, c, stream, esdb.Any{}, events("Seeded", tt.existing)...)
			}
			res, err := c.AppendToStream(ctxFor(t), stream, esdb.AppendToStreamOptions{ExpectedRevision: tt.exp}, event("Tried"))
			if tt.wantErr {
				if got := errCode(err); got != esdb.ErrorCodeWrongExpectedVersion {
					t.Fatalf("err = %v (code %d), want wrong expected version", err, got)
				}
				if n := srv.StreamLen(stream); n != tt.existing {
					t.Fatalf("stream has %d events after a refused append, want %d", n, tt.existing)
				}
				return
			}
			if err != nil {
				t.Fatalf("append: %v", err)
			}
			if res.NextExpectedVersion != tt.wantNext {
				t.Fatalf("next expected version = %d, want %d", res.NextExpectedVersion, tt.wantNext)
			}
			if res.CommitPosition == 0 || res.CommitPosition != res.PreparePosition {
				t.Fatalf("position commit=%d prepare=%d, want equal and non-zero", res.CommitPosition, res.PreparePosition)
			}
		})
	}
}

func TestAppend_WrongExpectedVersion_NamesCurrentRevision(t *testing.T) {
	srv := esdbtest.New(t)
	c := newClient(t, srv)
	mustAppend(t, c, "wev", esdb.NoStream{}, events("A", 3)...)
	_, err := c.AppendToStream(ctxFor(t), "wev", esdb.AppendToStreamOptions{ExpectedRevision: esdb.Revision(0)}, event("B"))
	if err == nil || !strings.Contains(err.Error(), "expecting '0' but got '2'") {
		t.Fatalf("err = %v, want expecting '0' but got '2'", err)
	}
	_, err = c.AppendToStream(ctxFor(t), "wev-new", esdb.AppendToStreamOptions{ExpectedRevision: esdb.StreamExists{}}, event("B"))
	if err == nil || !strings.Contains(err.Error(), "expecting 'stream_exists' but got 'no_stream'") {
		t.Fatalf("err = %v, want expecting 'stream_exists' but got 'no_stream'", err)
	}
}

func TestAppend_Retry_IdempotencyByEventID(t *testing.T) {
	tests := []struct {
		name string
		// first and retry expected versions; the stream holds one event before the first append
		first, retry   esdb.ExpectedRevision
		forgetIDs      bool // empty the id cache between (a restart or eviction)
		sameIDs        bool
		wantErr        bool
		wantLen        int
		wantSameAnswer bool
	}{
		{"exact revision, same ids: same answer", esdb.Revision(0), esdb.Revision(0), false, true, false, 3, true},
		{"exact revision, same ids after cache loss: same answer", esdb.Revision(0), esdb.Revision(0), true, true, false, 3, true},
		{"exact revision, other ids: conflict", esdb.Revision(0), esdb.Revision(0), false, false, true, 3, false},
		{"any, same ids in cache: same answer", esdb.Any{}, esdb.Any{}, false, true, false, 3, true},
		{"any, same ids after cache loss: duplicates", esdb.Any{}, esdb.Any{}, true, true, false, 5, false},
		{"stream_exists, same ids after cache loss: duplicates", esdb.StreamExists{}, esdb.StreamExists{}, true, true, false, 5, false},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := esdbtest.New(t)
			c := newClient(t, srv)
			stream := "idem-" + string(rune('a'+i))
			mustAppend(t, c, stream, esdb.NoStream{}, event("Seed"))
			batch := events("Batch", 2)
			first := mustAppend(t, c, stream, tt.first, batch...)
			mustAppend(t, c, "other", esdb.Any{}, event("Noise")) // the log moves on
			if tt.forgetIDs {
				srv.ForgetEventIDs()
			}
			retry := batch
			if !tt.sameIDs {
				retry = events("Batch", 2)
			}
			res, err := c.AppendToStream(ctxFor(t), stream, esdb.AppendToStreamOptions{ExpectedRevision: tt.retry}, retry...)
			if tt.wantErr {
				if errCode(err) != esdb.ErrorCodeWrongExpectedVersion {
					t.Fatalf("err = %v, want wrong expected version", err)
				}
			} else if err != nil {
				t.Fatalf("retry: %v", err)
			}
			if n := srv.StreamLen(stream); n != tt.wantLen {
				t.Fatalf("stream has %d events, want %d", n, tt.wantLen)
			}
			if tt.wantSameAnswer && *res != *first {
				t.Fatalf("retry answered %+v, want the original %+v", *res, *first)
			}
		})
	}
}

func TestAppend_NoStreamRetry_SameIDs_IsIdempotent(t *testing.T) {
	srv := esdbtest.New(t)
	c := newClient(t, srv)
	batch := events("Created", 2)
	first := mustAppend(t, c, "ns", esdb.NoStream{}, batch...)
	srv.ForgetEventIDs()
	again := mustAppend(t, c, "ns", esdb.NoStream{}, batch...)
	if *again != *first || srv.StreamLen("ns") != 2 {
		t.Fatalf("retry answered %+v (stream %d events), want %+v and 2 events", *again, srv.StreamLen("ns"), *first)
	}
	if srv.Appends() != 2 {
		t.Fatalf("appends = %d, want 2", srv.Appends())
	}
}

func TestAppend_Empty_ChecksVersionWritesNothing(t *testing.T) {
	srv := esdbtest.New(t)
	c := newClient(t, srv)
	head := srv.Head()
	if _, err := c.AppendToStream(ctxFor(t), "empty", esdb.AppendToStreamOptions{ExpectedRevision: esdb.Any{}}); err != nil {
		t.Fatalf("empty append with any: %v", err)
	}
	if _, err := c.AppendToStream(ctxFor(t), "empty", esdb.AppendToStreamOptions{ExpectedRevision: esdb.StreamExists{}}); errCode(err) != esdb.ErrorCodeWrongExpectedVersion {
		t.Fatalf("empty append with stream_exists on no stream: %v, want wrong expected version", err)
	}
	if srv.Head() != head || srv.StreamLen("empty") != 0 {
		t.Fatalf("an empty append wrote something")
	}
}

func TestAppend_SizeLimit(t *testing.T) {
	srv, err := esdbtest.Start(esdbtest.Options{MaxAppendSize: 1000})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Close() })
	c := newClient(t, srv)
	// data + custom metadata + 2 × type length: 980 + 10 + 2×5 = 1000 fits, one more byte does not.
	fits := esdb.EventData{EventType: "Sized", ContentType: esdb.ContentTypeBinary, Data: bytes.Repeat([]byte("x"), 980), Metadata: bytes.Repeat([]byte("m"), 10)}
	mustAppend(t, c, "sized", esdb.Any{}, fits)
	over := fits
	over.Data = append(over.Data, 'y')
	_, err = c.AppendToStream(ctxFor(t), "sized", esdb.AppendToStreamOptions{}, over)
	if errCode(err) != esdb.ErrorCodeUnknown || !strings.Contains(err.Error(), "Maximum Append Size of 1000 Exceeded") {
		t.Fatalf("err = %v (code %d), want unknown maximum append size", err, errCode(err))
	}
	if srv.StreamLen("sized") != 1 {
		t.Fatalf("the oversized append was written")
	}

	def := esdbtest.New(t)
	dc := newClient(t, def)
	big := esdb.EventData{EventType: "Big", ContentType: esdb.ContentTypeBinary, Data: bytes.Repeat([]byte("x"), esdbtest.DefaultMaxAppendSize)}
	if _, err := dc.AppendToStream(ctxFor(t), "big", esdb.AppendToStreamOptions{}, big); err == nil {
		t.Fatalf("a %d-byte event passed the default 1 MiB limit", len(big.Data))
	}
}

func TestPositions_GappedIncreasingNotZero_CreatedTicks(t *testing.T) {
	srv := esdbtest.New(t)
	c := newClient(t, srv)
	before := time.Now().Add(-time.Second)
	for i := 0; i < 5; i++ {
		mustAppend(t, c, "pos", esdb.Any{}, events("P", i%2+1)...)
	}
	all := readAll(t, c, esdb.ReadAllOptions{From: esdb.Start{}}, 100)
	if len(all) < 8 {
		t.Fatalf("$all has %d events, want the epoch event and 7 more", len(all))
	}
	if all[0].Event.StreamID != "$epoch-information" {
		t.Fatalf("first $all event in %q, want the $epoch-information system stream", all[0].Event.StreamID)
	}
	var prev uint64
	gaps := 0
	for i, ev := range all {
		p := ev.Event.Position
		if p.Commit == 0 || p.Commit != p.Prepare || p.Commit <= prev {
			t.Fatalf("event %d at %+v after %d: want commit == prepare, increasing, never 0", i, p, prev)
		}
		if prev != 0 && p.Commit > prev+1 {
			gaps++
		}
		prev = p.Commit
		if ev.Event.CreatedDate.Before(before) || ev.Event.CreatedDate.After(time.Now().Add(time.Second)) {
			t.Fatalf("created %v, want about now", ev.Event.CreatedDate)
		}
	}
	if gaps != len(all)-1 {
		t.Fatalf("%d gaps among %d events, want positions with gaps", gaps, len(all))
	}
	if srv.Head() != prev {
		t.Fatalf("Head() = %d, want %d", srv.Head(), prev)
	}
	if all[1].Event.ContentType != "application/json" {
		t.Fatalf("content type %q", all[1].Event.ContentType)
	}
}

func TestReadStream_Directions(t *testing.T) {
	srv := esdbtest.New(t)
	c := newClient(t, srv)
	mustAppend(t, c, "dir", esdb.NoStream{}, events("D", 5)...)
	tests := []struct {
		name  string
		opts  esdb.ReadStreamOptions
		count uint64
		want  []uint64
	}{
		{"forwards from start", esdb.ReadStreamOptions{From: esdb.Start{}}, 10, []uint64{0, 1, 2, 3, 4}},
		{"forwards from start, count", esdb.ReadStreamOptions{From: esdb.Start{}}, 2, []uint64{0, 1}},
		{"forwards from revision includes it", esdb.ReadStreamOptions{From: esdb.Revision(3)}, 10, []uint64{3, 4}},
		{"forwards past the end", esdb.ReadStreamOptions{From: esdb.Revision(9)}, 10, nil},
		{"forwards from end", esdb.ReadStreamOptions{From: esdb.End{}}, 10, nil},
		{"backwards from end", esdb.ReadStreamOptions{Direction: esdb.Backwards, From: esdb.End{}}, 10, []uint64{4, 3, 2, 1, 0}},
		{"backwards from end, count", esdb.ReadStreamOptions{Direction: esdb.Backwards, From: esdb.End{}}, 1, []uint64{4}},
		{"backwards from revision includes it", esdb.ReadStreamOptions{Direction: esdb.Backwards, From: esdb.Revision(1)}, 10, []uint64{1, 0}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := readStream(t, c, "dir", tt.opts, tt.count)
			if err != nil {
				t.Fatalf("read: %v", err)
			}
			var revs []uint64
			for _, ev := range got {
				revs = append(revs, ev.Event.EventNumber)
			}
			if len(revs) != len(tt.want) {
				t.Fatalf("revisions %v, want %v", revs, tt.want)
			}
			for i := range revs {
				if revs[i] != tt.want[i] {
					t.Fatalf("revisions %v, want %v", revs, tt.want)
				}
			}
		})
	}
}

func TestReadAll_PositionInclusiveForwardsExclusiveBackwards(t *testing.T) {
	srv := esdbtest.New(t)
	c := newClient(t, srv)
	mustAppend(t, c, "ra", esdb.NoStream{}, events("R", 4)...)
	all := readAll(t, c, esdb.ReadAllOptions{From: esdb.Start{}}, 100)
	mid := all[2].Event.Position
	fw := readAll(t, c, esdb.ReadAllOptions{From: mid}, 100)
	if len(fw) != len(all)-2 || fw[0].Event.Position != mid {
		t.Fatalf("forwards from %v: %d events starting %v, want %d starting at it", mid, len(fw), fw[0].Event.Position, len(all)-2)
	}
	bw := readAll(t, c, esdb.ReadAllOptions{From: mid, Direction: esdb.Backwards}, 100)
	if len(bw) != 2 || bw[0].Event.Position != all[1].Event.Position {
		t.Fatalf("backwards from %v: %d events, want the 2 before it", mid, len(bw))
	}
	if end := readAll(t, c, esdb.ReadAllOptions{From: esdb.End{}}, 100); len(end) != 0 {
		t.Fatalf("forwards from end: %d events", len(end))
	}
	last := readAll(t, c, esdb.ReadAllOptions{From: esdb.End{}, Direction: esdb.Backwards}, 1)
	if len(last) != 1 || last[0].Event.Position.Commit != srv.Head() {
		t.Fatalf("backwards from end: %v, want the head", last)
	}
}

func TestReadStream_NotFoundAndDeleted(t *testing.T) {
	srv := esdbtest.New(t)
	c := newClient(t, srv)
	if _, err := readStream(t, c, "nope", esdb.ReadStreamOptions{}, 10); errCode(err) != esdb.ErrorCodeResourceNotFound {
		t.Fatalf("read missing stream: %v, want resource not found", err)
	}

	mustAppend(t, c, "soft", esdb.NoStream{}, events("S", 2)...)
	del, err := c.DeleteStream(ctxFor(t), "soft", esdb.DeleteStreamOptions{ExpectedRevision: esdb.Revision(1)})
	if err != nil || del.Position.Commit == 0 {
		t.Fatalf("delete: %v %+v", err, del)
	}
	if _, err := readStream(t, c, "soft", esdb.ReadStreamOptions{}, 10); errCode(err) != esdb.ErrorCodeResourceNotFound {
		t.Fatalf("read soft-deleted stream: %v, want resource not found", err)
	}
	res := mustAppend(t, c, "soft", esdb.Any{}, event("Again"))
	if res.NextExpectedVersion != 2 {
		t.Fatalf("recreated stream at revision %d, want 2 (revisions continue)", res.NextExpectedVersion)
	}
	got, err := readStream(t, c, "soft", esdb.ReadStreamOptions{}, 10)
	if err != nil || len(got) != 1 || got[0].Event.EventNumber != 2 {
		t.Fatalf("read recreated stream: %v %d events, want only revision 2", err, len(got))
	}

	mustAppend(t, c, "hard", esdb.NoStream{}, event("H"))
	if _, err := c.TombstoneStream(ctxFor(t), "hard", esdb.TombstoneStreamOptions{}); err != nil {
		t.Fatalf("tombstone: %v", err)
	}
	_, err = readStream(t, c, "hard", esdb.ReadStreamOptions{}, 10)
	if errCode(err) != esdb.ErrorCodeStreamDeleted || !strings.Contains(err.Error(), "'hard'") {
		t.Fatalf("read tombstoned stream: %v, want stream deleted naming it", err)
	}
	if _, err := c.AppendToStream(ctxFor(t), "hard", esdb.AppendToStreamOptions{}, event("H")); errCode(err) != esdb.ErrorCodeStreamDeleted {
		t.Fatalf("append to tombstoned stream: %v, want stream deleted", err)
	}
}

func TestAppend_AnyRetry_PartlyWrittenBatch_IsRefused(t *testing.T) {
	srv := esdbtest.New(t)
	c := newClient(t, srv)
	batch := events("B", 2)
	mustAppend(t, c, "partial", esdb.Any{}, batch...)
	changed := []esdb.EventData{batch[0], event("B")}
	_, err := c.AppendToStream(ctxFor(t), "partial", esdb.AppendToStreamOptions{ExpectedRevision: esdb.Any{}}, changed...)
	if errCode(err) != esdb.ErrorCodeWrongExpectedVersion || srv.StreamLen("partial") != 2 {
		t.Fatalf("retry with the first id known and the second new: %v, %d events; want wrong expected version and 2", err, srv.StreamLen("partial"))
	}
}

func TestSubscribeToStream_AfterSoftDelete_OnlyTheRecreatedEvents(t *testing.T) {
	srv := esdbtest.New(t)
	c := newClient(t, srv)
	mustAppend(t, c, "re", esdb.NoStream{}, events("Old", 2)...)
	if _, err := c.DeleteStream(ctxFor(t), "re", esdb.DeleteStreamOptions{}); err != nil {
		t.Fatal(err)
	}
	mustAppend(t, c, "re", esdb.NoStream{}, event("New"))
	sub, err := c.SubscribeToStream(ctxFor(t), "re", esdb.SubscribeToStreamOptions{From: esdb.Start{}})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	got := collect(t, sub, caughtUp)
	if fmt.Sprint(got.items) != "[E:re/2 U]" {
		t.Fatalf("delivered %v, want only re/2", got.items)
	}
}

func TestReadAll_FromAPositionInsideARecord_IsAnInvalidPosition(t *testing.T) {
	// Given two events in $all
	srv := esdbtest.New(t)
	c := newClient(t, srv)
	mustAppend(t, c, "inside-a", esdb.Any{}, event("First"))
	second := mustAppend(t, c, "inside-b", esdb.Any{}, event("Second"))
	tests := []struct {
		name    string
		pos     uint64
		wantErr bool
	}{
		{"an event's position", second.CommitPosition, false},
		{"one byte before an event", second.CommitPosition - 1, true},
		{"one byte after an event", second.CommitPosition + 1, true},
		{"zero", 0, false},
		{"the end and beyond", srv.Head() + 1<<20, false},
	}
	for _, tt := range tests {
		for _, dir := range []esdb.Direction{esdb.Forwards, esdb.Backwards} {
			t.Run(fmt.Sprintf("%s/%v", tt.name, dir), func(t *testing.T) {
				// When $all is read from that position
				rs, err := c.ReadAll(ctxFor(t), esdb.ReadAllOptions{Direction: dir, From: esdb.Position{Commit: tt.pos, Prepare: tt.pos}}, 10)
				if err == nil {
					defer rs.Close()
					_, err = drain(rs)
				}
				// Then the real server's answer comes: InvalidArgument inside a record
				if tt.wantErr && (err == nil || !strings.Contains(err.Error(), "invalid position")) {
					t.Fatalf("err = %v, want an invalid position", err)
				}
				if !tt.wantErr && err != nil {
					t.Fatalf("err = %v, want none", err)
				}
			})
		}
	}
}
