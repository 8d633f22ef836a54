package pipeline

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/usersync/usersync/domain"
	"github.com/usersync/usersync/eventstore"
)

// Follower is the part of the event store the subscriber needs.
type Follower interface {
	Subscribe(ctx context.Context, after uint64) *eventstore.Subscription
}

// Message metadata keys the subscriber sets.
const (
	metaPosition   = "position"
	metaStream     = "stream"
	metaVersion    = "version"
	metaType       = "type"
	metaRecordedAt = "recorded_at"
	metaEventMeta  = "event_metadata"
)

// Subscriber is a Watermill message.Subscriber over the event store. A
// topic is a consumer's name: Subscribe asks start where that consumer's
// checkpoint is and delivers every later event in order, one at a time: the
// next message goes out only once the previous one is acked. A nacked
// message is delivered again after a pause.
type Subscriber struct {
	store     Follower
	start     func(ctx context.Context, topic string) (uint64, error)
	log       *slog.Logger
	redeliver time.Duration

	mu      sync.Mutex
	closed  bool
	closing chan struct{}
	wg      sync.WaitGroup
}

// NewSubscriber makes a subscriber; start gives the checkpoint of a topic.
func NewSubscriber(store Follower, start func(ctx context.Context, topic string) (uint64, error), log *slog.Logger) *Subscriber {
	return &Subscriber{store: store, start: start, log: log, redeliver: 200 * time.Millisecond, closing: make(chan struct{})}
}

// String names the subscriber in Watermill's logs and metrics (the
// subscriber_name label). It is the name the type had before it moved out
// of package projections, so that dashboards and queries keep matching.
func (s *Subscriber) String() string { return "projections.Subscriber" }

// Subscribe implements message.Subscriber.
func (s *Subscriber) Subscribe(ctx context.Context, topic string) (<-chan *message.Message, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, errors.New("subscribe: subscriber is closed")
	}
	after, err := s.start(ctx, topic)
	if err != nil {
		return nil, fmt.Errorf("subscribe %s: read checkpoint: %w", topic, err)
	}
	out := make(chan *message.Message)
	s.wg.Add(1)
	go s.run(ctx, topic, after, out)
	return out, nil
}

func (s *Subscriber) run(ctx context.Context, topic string, after uint64, out chan<- *message.Message) {
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
	for ctx.Err() == nil {
		sub := s.store.Subscribe(ctx, after)
		for rec := range sub.Events() {
			if !s.deliver(ctx, rec, out) {
				return
			}
			after = rec.Position
		}
		if err := sub.Err(); err != nil {
			s.log.Error("event subscription failed; resubscribing", "topic", topic, "after", after, "err", err)
			if !s.pause(ctx) {
				return
			}
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
			if !s.pause(ctx) {
				return false
			}
		case <-ctx.Done():
			return false
		}
	}
}

func (s *Subscriber) pause(ctx context.Context) bool {
	t := time.NewTimer(s.redeliver)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
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
