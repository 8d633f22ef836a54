package esdbtest

import (
	"fmt"
	"testing"

	"github.com/google/uuid"
)

func TestRemoveLocked_EveryMessageHandedToTheMemberIsRetriedWithItsCountUp(t *testing.T) {
	// Given a member with a message written to its stream, one handed to
	// it but not yet written (its queue), and one at MaxRetryCount.
	g := newGroup(nil, allStreamName, "g", groupSettings{strategy: pinned, maxRetry: 1})
	c := &consumer{id: "a", buffer: 10, signal: make(chan struct{}, 1), gone: make(chan struct{})}
	g.consumers = []*consumer{c}
	msgs := []*pmsg{{seq: 1, retry: 0}, {seq: 2, retry: 0}, {seq: 3, retry: 1}}
	for _, m := range msgs {
		m.rec, m.consumer = &record{id: uuid.New()}, c
		g.inflight[m.rec.id] = append(g.inflight[m.rec.id], m)
		c.inflight++
	}
	c.queue = []*pmsg{msgs[1]}

	// When the member goes away.
	g.removeLocked(c)

	// Then all three wait to be retried, in order, each with one more
	// retry, as the real server's RemoveClientByCorrelationId does (every
	// message it pushed counts, also those its gRPC writer had not sent).
	var got []string
	for _, m := range g.retries {
		got = append(got, fmt.Sprintf("%d#%d", m.seq, m.retry))
	}
	if fmt.Sprint(got) != "[1#1 2#1 3#2]" {
		t.Fatalf("retries %v, want [1#1 2#1 3#2]", got)
	}
	if len(g.inflight) != 0 || len(g.consumers) != 0 || len(c.queue) != 0 {
		t.Fatalf("left in flight %d, consumers %d, queued %d", len(g.inflight), len(g.consumers), len(c.queue))
	}
}
