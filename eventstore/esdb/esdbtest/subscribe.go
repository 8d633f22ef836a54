package esdbtest

import (
	"regexp"
	"strings"

	"github.com/EventStore/EventStore-Client-Go/v4/protos/streams"
	"github.com/google/uuid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

const (
	// defaultWindow is the filter window when the client sends none (or "count").
	defaultWindow = 32
	// subscriptionBatch bounds how many events a subscription takes from the log per lock.
	subscriptionBatch = 256
)

// filter is a catch-up subscription's server-side filter.
type filter struct {
	onType   bool // event type, else stream name
	prefixes []string
	regex    *regexp.Regexp
	interval int // checkpoint every interval events considered
}

func newFilter(fo *streams.ReadReq_Options_FilterOptions) (*filter, error) {
	var expr *streams.ReadReq_Options_FilterOptions_Expression
	onType := false
	switch x := fo.Filter.(type) {
	case *streams.ReadReq_Options_FilterOptions_EventType:
		onType, expr = true, x.EventType
	case *streams.ReadReq_Options_FilterOptions_StreamIdentifier:
		expr = x.StreamIdentifier
	default:
		return nil, status.Error(codes.InvalidArgument, "esdb stand-in: filter without a stream or event type expression")
	}
	var window uint32
	if m, ok := fo.Window.(*streams.ReadReq_Options_FilterOptions_Max); ok {
		window = m.Max
	}
	return makeFilter(onType, expr.GetPrefix(), expr.GetRegex(), window, fo.GetCheckpointIntervalMultiplier())
}

// makeFilter builds a filter; a zero window is the default one, a zero multiplier is 1.
func makeFilter(onType bool, prefixes []string, regex string, window, mult uint32) (*filter, error) {
	f := &filter{onType: onType, prefixes: prefixes}
	if regex != "" {
		re, err := regexp.Compile(regex)
		if err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "esdb stand-in: filter regex %q: %v", regex, err)
		}
		f.regex = re
	}
	w := defaultWindow
	if window > 0 {
		w = int(window)
	}
	m := int(mult)
	if m <= 0 {
		m = 1
	}
	f.interval = w * m
	return f, nil
}

func (f *filter) match(r *record) bool {
	if isHiddenFromFilters(r.stream) {
		return false
	}
	s := r.stream
	if f.onType {
		s = r.eventType
	}
	if f.regex != nil {
		return f.regex.MatchString(s)
	}
	for _, p := range f.prefixes {
		if strings.HasPrefix(s, p) {
			return true
		}
	}
	return false
}

// subscribe serves a catch-up subscription: confirmation, the events strictly after the start,
// checkpoints (filtered $all only), caught_up when it goes live, then live events, until the
// client leaves, DropSubscriptions or Stop.
func (s *Server) subscribe(opts *streams.ReadReq_Options, stream streams.Streams_ReadServer) error {
	ctx := stream.Context()
	drop := s.dropped()
	str := opts.GetUuidOption().GetString_() != nil
	resolve := opts.GetResolveLinks()

	var f *filter
	if fo, ok := opts.FilterOption.(*streams.ReadReq_Options_Filter); ok {
		var err error
		if f, err = newFilter(fo.Filter); err != nil {
			return err
		}
	}

	// next returns the records after the cursor and advances it, and the channel that closes at
	// the next write.
	var next func() ([]*record, <-chan struct{})
	switch so := opts.StreamOption.(type) {
	case *streams.ReadReq_Options_All:
		s.log.mu.Lock()
		idx := 0
		switch p := so.All.AllOption.(type) {
		case *streams.ReadReq_Options_AllOptions_End:
			idx = len(s.log.all)
		case *streams.ReadReq_Options_AllOptions_Position:
			if !s.log.validPosition(p.Position.GetCommitPosition()) {
				s.log.mu.Unlock()
				return errInvalidPosition
			}
			idx = s.log.indexAfter(p.Position.GetCommitPosition(), false)
		}
		s.log.mu.Unlock()
		next = func() ([]*record, <-chan struct{}) {
			s.log.mu.Lock()
			defer s.log.mu.Unlock()
			end := min(len(s.log.all), idx+subscriptionBatch)
			out := s.log.all[idx:end]
			idx = end
			return out, s.log.changed
		}
	case *streams.ReadReq_Options_Stream:
		name := string(so.Stream.GetStreamIdentifier().GetStreamName())
		s.log.mu.Lock()
		st := s.log.streams[name]
		if st != nil && st.tombstoned {
			s.log.mu.Unlock()
			stream.SetTrailer(deletedTrailer(name))
			return status.Errorf(codes.FailedPrecondition, "Event stream '%s' is deleted.", name)
		}
		var from int64 // first revision to send
		switch r := so.Stream.RevisionOption.(type) {
		case *streams.ReadReq_Options_StreamOptions_End:
			from = st.lastRevision() + 1
		case *streams.ReadReq_Options_StreamOptions_Revision:
			from = int64(r.Revision) + 1
		}
		s.log.mu.Unlock()
		next = func() ([]*record, <-chan struct{}) {
			s.log.mu.Lock()
			defer s.log.mu.Unlock()
			st := s.log.streams[name]
			if st == nil {
				return nil, s.log.changed
			}
			// Events before a soft delete are not read again (the stream's $tb).
			from = max(from, int64(st.truncateBefore))
			if st.softDeleted || from >= int64(len(st.events)) {
				return nil, s.log.changed
			}
			end := min(int64(len(st.events)), from+subscriptionBatch)
			out := st.events[from:end]
			from = end
			return out, s.log.changed
		}
		f = nil // stream subscriptions take no filter
	default:
		return status.Error(codes.InvalidArgument, "esdb stand-in: subscription without a stream or $all option")
	}

	id := uuid.NewString()
	if err := stream.Send(&streams.ReadResp{Content: &streams.ReadResp_Confirmation{
		Confirmation: &streams.ReadResp_SubscriptionConfirmation{SubscriptionId: id},
	}}); err != nil {
		return err
	}
	s.logger.Debug("esdb stand-in subscription", "id", id)

	live := false
	considered := 0
	var last *record // last considered event, for checkpoints
	checkpoint := func(pos uint64) error {
		return stream.Send(&streams.ReadResp{Content: &streams.ReadResp_Checkpoint_{
			Checkpoint: &streams.ReadResp_Checkpoint{CommitPosition: pos, PreparePosition: pos},
		}})
	}
	for {
		batch, changed := next()
		for _, r := range batch {
			last = r
			if f == nil || f.match(r) {
				if err := stream.Send(&streams.ReadResp{Content: &streams.ReadResp_Event{Event: s.readEvent(r, resolve, str)}}); err != nil {
					return err
				}
			}
			if f != nil {
				considered++
				if considered%f.interval == 0 {
					if err := checkpoint(r.pos); err != nil {
						return err
					}
				}
			}
		}
		if len(batch) > 0 {
			continue
		}
		if !live {
			live = true
			if f != nil && last != nil && considered%f.interval != 0 {
				if err := checkpoint(last.pos); err != nil {
					return err
				}
			}
			if err := stream.Send(&streams.ReadResp{Content: &streams.ReadResp_CaughtUp_{CaughtUp: &streams.ReadResp_CaughtUp{}}}); err != nil {
				return err
			}
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return status.FromContextError(ctx.Err()).Err()
		case <-drop:
			return status.Error(codes.Unavailable, "esdb stand-in: subscription dropped (fault injected)")
		}
	}
}
