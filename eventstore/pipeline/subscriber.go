package pipeline

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/usersync/usersync/domain"
)

// Message metadata keys the subscriber sets.
const (
	metaPosition   = "position"
	metaStream     = "stream"
	metaVersion    = "version"
	metaType       = "type"
	metaRecordedAt = "recorded_at"
	metaEventMeta  = "event_metadata"
)

// Subscriber is the Watermill message.Subscriber of the pipeline's process
// managers. A topic is a consumer's name; its messages come from that
// consumer's lane, fed by the one reader of the log (or by the lane's own
// reads while it is behind), not from a subscription of its own. Events
// after the consumer's checkpoint are delivered in order, one at a time:
// the next message goes out only once the previous one is acked. A nacked
// message is delivered again after a pause. An event a Selective consumer
// does not want is handed to its Handle directly.
type Subscriber struct {
	p         *Pipeline
	redeliver time.Duration

	mu      sync.Mutex
	closed  bool
	closing chan struct{}
	wg      sync.WaitGroup
}

// String names the subscriber in Watermill's logs and metrics (the
// subscriber_name label). It is the name the type had before it moved out
// of package projections, so that dashboards and queries keep matching.
func (s *Subscriber) String() string { return "projections.Subscriber" }

// Subscribe implements message.Subscriber; the pipeline's router calls it
// once Run has read the checkpoints.
func (s *Subscriber) Subscribe(ctx context.Context, topic string) (<-chan *message.Message, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, errors.New("subscribe: subscriber is closed")
	}
	l, ok := s.p.byName[topic]
	if !ok || l.consumer == nil {
		return nil, fmt.Errorf("subscribe %s: no such process manager", topic)
	}
	out := make(chan *message.Message)
	s.wg.Add(1)
	go s.run(ctx, l, out)
	return out, nil
}

func (s *Subscriber) run(ctx context.Context, l *lane, out chan<- *message.Message) {
	defer s.wg.Done()
	defer close(out)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-s.closing:
			cancel()
		case <-ctx.Done():
		}
	}()
	sel, _ := l.consumer.(Selective)
	failures := 0
	for ctx.Err() == nil {
		recs, err := s.p.next(ctx, l, 0)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			failures++
			s.p.log.Error("reading the event log failed; trying again", "consumer", l.name, "after", l.fed, "err", err)
			if !pause(ctx, s.p.cfg.Retry.Delay(failures)) {
				return
			}
			continue
		}
		failures = 0
		for _, rec := range recs {
			if sel != nil && !sel.Wants(rec.Type) && l.consumer.Handle(ctx, rec) == nil {
				// Not an event it acts on: no message needed.
			} else if !s.deliver(ctx, rec, out) {
				return
			}
			s.p.setFed(l, rec.Position)
			l.pos.Store(rec.Position)
		}
	}
}

// deliver sends rec until a handler acks it; false means the subscriber is
// stopping.
func (s *Subscriber) deliver(ctx context.Context, rec domain.RecordedEvent, out chan<- *message.Message) bool {
	for {
		msg := ToMessage(rec)
		msg.SetContext(ctx)
		select {
		case out <- msg:
		case <-ctx.Done():
			return false
		}
		select {
		case <-msg.Acked():
			return true
		case <-msg.Nacked():
			if !pause(ctx, s.redeliver) {
				return false
			}
		case <-ctx.Done():
			return false
		}
	}
}

// Close implements message.Subscriber: it stops every subscription and
// waits for them.
func (s *Subscriber) Close() error {
	s.mu.Lock()
	if !s.closed {
		s.closed = true
		close(s.closing)
	}
	s.mu.Unlock()
	s.wg.Wait()
	return nil
}

// ToMessage turns a stored event into a Watermill message: the payload is
// the event data, the rest travels in metadata.
func ToMessage(rec domain.RecordedEvent) *message.Message {
	pos := strconv.FormatUint(rec.Position, 10)
	msg := message.NewMessage(pos, rec.Data)
	msg.Metadata.Set(metaPosition, pos)
	msg.Metadata.Set(metaStream, rec.Stream)
	msg.Metadata.Set(metaVersion, strconv.FormatUint(rec.Version, 10))
	msg.Metadata.Set(metaType, rec.Type)
	msg.Metadata.Set(metaRecordedAt, strconv.FormatInt(rec.RecordedAt.UnixNano(), 10))
	msg.Metadata.Set(metaEventMeta, string(rec.Metadata))
	return msg
}

// FromMessage is the inverse of ToMessage.
func FromMessage(msg *message.Message) (domain.RecordedEvent, error) {
	pos, err := strconv.ParseUint(msg.Metadata.Get(metaPosition), 10, 64)
	if err != nil {
		return domain.RecordedEvent{}, fmt.Errorf("message %s: bad position: %w", msg.UUID, err)
	}
	version, err := strconv.ParseUint(msg.Metadata.Get(metaVersion), 10, 64)
	if err != nil {
		return domain.RecordedEvent{}, fmt.Errorf("message %s: bad version: %w", msg.UUID, err)
	}
	at, err := strconv.ParseInt(msg.Metadata.Get(metaRecordedAt), 10, 64)
	if err != nil {
		return domain.RecordedEvent{}, fmt.Errorf("message %s: bad recorded_at: %w", msg.UUID, err)
	}
	return domain.RecordedEvent{
		Position: pos, Stream: msg.Metadata.Get(metaStream), Version: version, Type: msg.Metadata.Get(metaType),
		Data: msg.Payload, Metadata: []byte(msg.Metadata.Get(metaEventMeta)), RecordedAt: time.Unix(0, at).UTC(),
	}, nil
}
