package esdbtest

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/EventStore/EventStore-Client-Go/v4/protos/persistent"
	"github.com/EventStore/EventStore-Client-Go/v4/protos/shared"
	"github.com/google/uuid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// Persistent subscriptions (competing consumers), after the real server's PersistentSubscription:
// one dispatcher per group reads the source ($all or a stream) in order, hands each event to a
// consumer chosen by the strategy if it has room in its buffer (else it waits: head of line),
// and puts retries before new events. A message is retried when Nacked with retry (or unknown),
// when its timeout passes, or when its consumer goes away; at MaxRetryCount a Nack or a timeout
// parks it (a consumer going away never does). The
// checkpoint is the last event before the oldest one not yet acked, skipped or parked; a
// restart resumes after it, so acknowledged events past the checkpoint come again.

const (
	pinnedBuckets       = 1024
	allStreamName       = "$all"
	checkpointEventType = "$SubscriptionCheckpoint"
	// maxTick bounds how long a dispatcher sleeps without looking at timeouts and checkpoints.
	maxTick = time.Second
)

type strategy int

const (
	roundRobin strategy = iota
	dispatchToSingle
	pinned
)

// groupSettings are a group's settings with the client's defaults applied where it sent zero.
type groupSettings struct {
	strategy        strategy
	maxRetry        int
	messageTimeout  time.Duration // 0: no timeout
	checkpointAfter time.Duration
	minCheckpoint   int
	maxCheckpoint   int
	maxSubscribers  int // 0: unlimited
	resolveLinks    bool
}

// pmsg is one event handed to a consumer (or waiting to be retried).
type pmsg struct {
	seq      int64 // index in the source: $all index or stream revision
	rec      *record
	retry    int
	consumer *consumer
	deadline time.Time
}

type consumer struct {
	id       string
	buffer   int
	inflight int
	queue    []*pmsg // to send
	signal   chan struct{}
	gone     chan struct{} // closed when the group drops the consumer
	goneOnce sync.Once
	joined   int
}

func (c *consumer) drop() { c.goneOnce.Do(func() { close(c.gone) }) }

type group struct {
	ps       *persistentSubs
	key      string // "stream::group"
	stream   string // allStreamName for $all
	name     string
	settings groupSettings
	filter   *filter // $all only; nil: every event but the hidden streams
	// filterSpec is the filter as created, kept in the config event.
	filterSpec *filterConfig

	mu          sync.Mutex
	start       int64 // first seq to read when there is no checkpoint
	cursor      int64 // next seq to read from the source
	checkpoint  int64 // last checkpointed seq, -1: none
	processed   int   // events done since the last checkpoint
	lastCP      time.Time
	retries     []*pmsg // in seq order
	inflight    map[uuid.UUID][]*pmsg
	consumers   []*consumer
	rr          int
	buckets     [pinnedBuckets]*consumer
	joins       int
	kick        chan struct{}
	deleted     chan struct{}
	deletedOnce sync.Once
}

type persistentSubs struct {
	s      *Server
	mu     sync.Mutex
	groups map[string]*group
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

func newPersistentSubs(s *Server) *persistentSubs {
	ctx, cancel := context.WithCancel(context.Background())
	return &persistentSubs{s: s, groups: make(map[string]*group), ctx: ctx, cancel: cancel}
}

// close stops every dispatcher (Close).
func (p *persistentSubs) close() {
	p.cancel()
	p.disconnectAll()
	p.wg.Wait()
}

// disconnectAll drops every consumer (Stop); their messages go back to be retried.
func (p *persistentSubs) disconnectAll() {
	p.mu.Lock()
	groups := make([]*group, 0, len(p.groups))
	for _, g := range p.groups {
		groups = append(groups, g)
	}
	p.mu.Unlock()
	for _, g := range groups {
		g.mu.Lock()
		for _, c := range slices.Clone(g.consumers) {
			g.removeLocked(c)
		}
		g.mu.Unlock()
	}
}

// restart forgets every group's in-memory state, as a node restart or leader change does:
// reading resumes after the last checkpoint.
func (p *persistentSubs) restart() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, g := range p.groups {
		g.mu.Lock()
		g.retries = nil
		g.inflight = make(map[uuid.UUID][]*pmsg)
		g.buckets = [pinnedBuckets]*consumer{}
		g.processed = 0
		if g.checkpoint >= 0 {
			g.cursor = g.checkpoint + 1
		} else {
			g.cursor = g.start
		}
		g.mu.Unlock()
	}
}

func groupKey(stream, name string) string { return stream + "::" + name }

// newGroup is a group with no consumers and no checkpoint; callers set its start and cursor.
func newGroup(p *persistentSubs, stream, name string, settings groupSettings) *group {
	return &group{ps: p, stream: stream, name: name, key: groupKey(stream, name), settings: settings,
		checkpoint: -1, lastCP: time.Now(), inflight: make(map[uuid.UUID][]*pmsg),
		kick: make(chan struct{}, 1), deleted: make(chan struct{})}
}

type persistentService struct {
	persistent.UnimplementedPersistentSubscriptionsServer
	s *Server
}

// Create makes a group on a stream or on $all; an existing group is AlreadyExists.
func (ps *persistentService) Create(ctx context.Context, req *persistent.CreateReq) (*persistent.CreateResp, error) {
	p := ps.s.ps
	o := req.GetOptions()
	if o.GetGroupName() == "" {
		return nil, status.Error(codes.InvalidArgument, "esdb stand-in: persistent subscription without a group name")
	}
	settings, err := toGroupSettings(o.GetSettings())
	if err != nil {
		return nil, err
	}
	g := newGroup(p, "", o.GetGroupName(), settings)

	l := ps.s.log
	l.mu.Lock()
	switch so := o.StreamOption.(type) {
	case *persistent.CreateReq_Options_All:
		g.stream = allStreamName
		switch a := so.All.AllOption.(type) {
		case *persistent.CreateReq_AllOptions_End:
			g.start = int64(len(l.all))
		case *persistent.CreateReq_AllOptions_Position:
			g.start = int64(l.indexAfter(a.Position.GetCommitPosition(), true))
		}
		if fo, ok := so.All.FilterOption.(*persistent.CreateReq_AllOptions_Filter); ok {
			var expr *persistent.CreateReq_AllOptions_FilterOptions_Expression
			onType := false
			switch x := fo.Filter.Filter.(type) {
			case *persistent.CreateReq_AllOptions_FilterOptions_EventType:
				onType, expr = true, x.EventType
			case *persistent.CreateReq_AllOptions_FilterOptions_StreamIdentifier:
				expr = x.StreamIdentifier
			}
			if g.filter, err = makeFilter(onType, expr.GetPrefix(), expr.GetRegex(), 0, 1); err != nil {
				l.mu.Unlock()
				return nil, err
			}
			g.filterSpec = &filterConfig{OnEventType: onType, Prefixes: expr.GetPrefix(), Regex: expr.GetRegex()}
		}
	default:
		var name string
		var st *persistent.CreateReq_StreamOptions
		if x, ok := so.(*persistent.CreateReq_Options_Stream); ok {
			st = x.Stream
			name = string(st.GetStreamIdentifier().GetStreamName())
		} else {
			name = string(o.GetStreamIdentifier().GetStreamName())
		}
		if name == "" {
			l.mu.Unlock()
			return nil, status.Error(codes.InvalidArgument, "esdb stand-in: persistent subscription without a stream")
		}
		g.stream = name
		switch r := st.GetRevisionOption().(type) {
		case *persistent.CreateReq_StreamOptions_End:
			g.start = l.streams[name].lastRevision() + 1
		case *persistent.CreateReq_StreamOptions_Revision:
			g.start = int64(r.Revision)
		case nil:
			if st == nil && o.GetSettings().GetRevision() == ^uint64(0) {
				g.start = l.streams[name].lastRevision() + 1
			}
		}
	}
	l.mu.Unlock()
	g.cursor = g.start
	g.key = groupKey(g.stream, g.name)

	p.mu.Lock()
	if _, ok := p.groups[g.key]; ok {
		p.mu.Unlock()
		return nil, status.Errorf(codes.AlreadyExists, "Subscription group %s on stream %s already exists.", g.name, g.stream)
	}
	p.groups[g.key] = g
	p.writeConfigLocked()
	p.wg.Add(1)
	p.mu.Unlock()
	go g.run(p.ctx)
	ps.s.logger.Debug("esdb stand-in persistent subscription created", "group", g.key)
	return &persistent.CreateResp{}, nil
}

func toGroupSettings(s *persistent.CreateReq_Settings) (groupSettings, error) {
	out := groupSettings{
		strategy:        roundRobin,
		maxRetry:        int(s.GetMaxRetryCount()),
		checkpointAfter: 2 * time.Second,
		minCheckpoint:   int(s.GetMinCheckpointCount()),
		maxCheckpoint:   int(s.GetMaxCheckpointCount()),
		maxSubscribers:  int(s.GetMaxSubscriberCount()),
		resolveLinks:    s.GetResolveLinks(),
	}
	switch strings.ToLower(s.GetConsumerStrategy()) {
	case "roundrobin":
		out.strategy = roundRobin
	case "dispatchtosingle":
		out.strategy = dispatchToSingle
	case "pinned":
		out.strategy = pinned
	case "":
		switch s.GetNamedConsumerStrategy() {
		case persistent.CreateReq_DispatchToSingle:
			out.strategy = dispatchToSingle
		case persistent.CreateReq_Pinned:
			out.strategy = pinned
		default:
			out.strategy = roundRobin
		}
	default:
		return out, status.Errorf(codes.InvalidArgument, "esdb stand-in: consumer strategy %q is not implemented (RoundRobin, DispatchToSingle, Pinned are)", s.GetConsumerStrategy())
	}
	switch t := s.GetMessageTimeout().(type) {
	case *persistent.CreateReq_Settings_MessageTimeoutMs:
		out.messageTimeout = time.Duration(t.MessageTimeoutMs) * time.Millisecond
	case *persistent.CreateReq_Settings_MessageTimeoutTicks:
		out.messageTimeout = time.Duration(t.MessageTimeoutTicks) * 100
	}
	switch t := s.GetCheckpointAfter().(type) {
	case *persistent.CreateReq_Settings_CheckpointAfterMs:
		out.checkpointAfter = time.Duration(t.CheckpointAfterMs) * time.Millisecond
	case *persistent.CreateReq_Settings_CheckpointAfterTicks:
		out.checkpointAfter = time.Duration(t.CheckpointAfterTicks) * 100
	}
	if out.maxRetry < 0 || out.minCheckpoint < 0 || out.maxCheckpoint < 0 || out.maxSubscribers < 0 || out.messageTimeout < 0 || out.checkpointAfter < 0 {
		return out, status.Error(codes.InvalidArgument, "esdb stand-in: negative persistent subscription setting")
	}
	if out.maxCheckpoint == 0 {
		out.maxCheckpoint = 1000
	}
	return out, nil
}

// Delete removes a group; its consumers are dropped.
func (ps *persistentService) Delete(ctx context.Context, req *persistent.DeleteReq) (*persistent.DeleteResp, error) {
	p := ps.s.ps
	o := req.GetOptions()
	stream := allStreamName
	if x, ok := o.StreamOption.(*persistent.DeleteReq_Options_StreamIdentifier); ok {
		stream = string(x.StreamIdentifier.GetStreamName())
	}
	key := groupKey(stream, o.GetGroupName())
	p.mu.Lock()
	g, ok := p.groups[key]
	if ok {
		delete(p.groups, key)
		p.writeConfigLocked()
	}
	p.mu.Unlock()
	if !ok {
		return nil, notExists(ctx, nil, stream, o.GetGroupName())
	}
	g.deletedOnce.Do(func() { close(g.deleted) })
	g.mu.Lock()
	for _, c := range slices.Clone(g.consumers) {
		g.removeLocked(c)
	}
	g.mu.Unlock()
	return &persistent.DeleteResp{}, nil
}

func notExists(ctx context.Context, ss grpc.ServerStream, stream, name string) error {
	md := metadata.Pairs("exception", "persistent-subscription-does-not-exist", "stream-name", stream, "group-name", name)
	if ss != nil {
		ss.SetTrailer(md)
	} else {
		_ = grpc.SetTrailer(ctx, md)
	}
	return status.Errorf(codes.NotFound, "Subscription group '%s' on stream '%s' does not exist.", name, stream)
}

// Read is one consumer: options, confirmation, then events out and acks/nacks in.
func (ps *persistentService) Read(stream persistent.PersistentSubscriptions_ReadServer) error {
	s := ps.s
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	o := first.GetOptions()
	if o == nil {
		return status.Error(codes.InvalidArgument, "esdb stand-in: persistent read must start with options")
	}
	name := allStreamName
	if x, ok := o.StreamOption.(*persistent.ReadReq_Options_StreamIdentifier); ok {
		name = string(x.StreamIdentifier.GetStreamName())
	}
	s.ps.mu.Lock()
	g := s.ps.groups[groupKey(name, o.GetGroupName())]
	s.ps.mu.Unlock()
	if g == nil {
		return notExists(nil, stream, name, o.GetGroupName())
	}
	buffer := int(o.GetBufferSize())
	if buffer <= 0 {
		buffer = 10
	}
	c := &consumer{id: uuid.NewString(), buffer: buffer, signal: make(chan struct{}, 1), gone: make(chan struct{})}
	stringIDs := o.GetUuidOption().GetString_() != nil

	g.mu.Lock()
	if g.settings.maxSubscribers > 0 && len(g.consumers) >= g.settings.maxSubscribers {
		g.mu.Unlock()
		stream.SetTrailer(metadata.Pairs("exception", "maximum-subscribers-reached"))
		return status.Errorf(codes.FailedPrecondition, "Maximum subscriptions reached for group '%s'.", g.key)
	}
	g.joins++
	c.joined = g.joins
	g.consumers = append(g.consumers, c)
	g.mu.Unlock()
	drop := s.dropped()
	defer func() {
		g.mu.Lock()
		g.removeLocked(c)
		g.mu.Unlock()
		g.wake()
	}()

	if err := stream.Send(&persistent.ReadResp{Content: &persistent.ReadResp_SubscriptionConfirmation_{
		SubscriptionConfirmation: &persistent.ReadResp_SubscriptionConfirmation{SubscriptionId: g.key},
	}}); err != nil {
		return err
	}
	g.wake()

	recvErr := make(chan error, 1)
	go func() {
		// Ends when the client closes the stream or the call ends.
		for {
			req, err := stream.Recv()
			if err != nil {
				recvErr <- err
				return
			}
			switch x := req.Content.(type) {
			case *persistent.ReadReq_Ack_:
				g.ack(c, x.Ack.GetIds())
			case *persistent.ReadReq_Nack_:
				g.nack(c, x.Nack.GetIds(), x.Nack.GetAction(), x.Nack.GetReason())
			}
		}
	}()

	ctx := stream.Context()
	for {
		select {
		case <-c.signal:
			// Copy what is sent under the lock: the dispatcher changes a message's retry count.
			g.mu.Lock()
			out := make([]pmsg, len(c.queue))
			for i, m := range c.queue {
				out[i] = pmsg{rec: m.rec, retry: m.retry}
			}
			c.queue = nil
			g.mu.Unlock()
			for i := range out {
				if err := stream.Send(&persistent.ReadResp{Content: &persistent.ReadResp_Event{Event: s.persistentEvent(&out[i], g.settings.resolveLinks, stringIDs)}}); err != nil {
					return err
				}
			}
		case err := <-recvErr:
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		case <-ctx.Done():
			return status.FromContextError(ctx.Err()).Err()
		case <-drop:
			return status.Error(codes.Unavailable, "esdb stand-in: subscription dropped (fault injected)")
		case <-c.gone:
			return status.Error(codes.Unavailable, "esdb stand-in: persistent subscription consumer dropped")
		case <-g.deleted:
			return status.Errorf(codes.Unavailable, "esdb stand-in: persistent subscription group %s deleted", g.key)
		}
	}
}

func (s *Server) persistentEvent(m *pmsg, resolve, stringIDs bool) *persistent.ReadResp_ReadEvent {
	ev := &persistent.ReadResp_ReadEvent{
		Event:    persistentRecorded(m.rec, stringIDs),
		Position: &persistent.ReadResp_ReadEvent_CommitPosition{CommitPosition: m.rec.pos},
		Count:    &persistent.ReadResp_ReadEvent_RetryCount{RetryCount: int32(m.retry)},
	}
	if resolve && m.rec.eventType == linkEventType {
		if target := s.resolveLink(m.rec); target != nil {
			ev.Link = ev.Event
			ev.Event = persistentRecorded(target, stringIDs)
		}
	}
	return ev
}

func persistentRecorded(r *record, stringIDs bool) *persistent.ReadResp_ReadEvent_RecordedEvent {
	id := protoUUID(r.id)
	if stringIDs {
		id = &shared.UUID{Value: &shared.UUID_String_{String_: r.id.String()}}
	}
	return &persistent.ReadResp_ReadEvent_RecordedEvent{
		Id:               id,
		StreamIdentifier: &shared.StreamIdentifier{StreamName: []byte(r.stream)},
		StreamRevision:   r.revision,
		PreparePosition:  r.pos,
		CommitPosition:   r.pos,
		Metadata:         systemMetadata(r),
		CustomMetadata:   r.meta,
		Data:             r.data,
	}
}

func (g *group) wake() {
	select {
	case g.kick <- struct{}{}:
	default:
	}
}

// removeLocked drops a consumer; every message handed to it and not acked is retried (to the
// others) at once, with its retry count one higher, as the real server's
// RemoveClientByCorrelationId does when a member's call ends: that counts every message it
// pushed, also those its gRPC writer had not sent yet, and parks none of them, even past
// MaxRetryCount (parking happens only on a Nack or a timeout).
func (g *group) removeLocked(c *consumer) {
	i := slices.Index(g.consumers, c)
	if i < 0 {
		return
	}
	g.consumers = slices.Delete(g.consumers, i, i+1)
	for b := range g.buckets {
		if g.buckets[b] == c {
			g.buckets[b] = nil
		}
	}
	var lost []*pmsg
	for id, ms := range g.inflight {
		keep := ms[:0]
		for _, m := range ms {
			if m.consumer == c {
				lost = append(lost, m)
			} else {
				keep = append(keep, m)
			}
		}
		if len(keep) == 0 {
			delete(g.inflight, id)
		} else {
			g.inflight[id] = keep
		}
	}
	c.queue = nil
	c.inflight = 0
	slices.SortFunc(lost, func(a, b *pmsg) int { return int(a.seq - b.seq) })
	for _, m := range lost {
		m.consumer = nil
		g.requeueLocked(m)
	}
	c.drop()
}

// takeInflight removes and returns the in-flight message with this id held by c.
func (g *group) takeInflight(c *consumer, id uuid.UUID) *pmsg {
	ms := g.inflight[id]
	for i, m := range ms {
		if m.consumer == c {
			ms = slices.Delete(ms, i, i+1)
			if len(ms) == 0 {
				delete(g.inflight, id)
			} else {
				g.inflight[id] = ms
			}
			c.inflight--
			return m
		}
	}
	return nil
}

func (g *group) ack(c *consumer, ids []*shared.UUID) {
	g.mu.Lock()
	for _, pid := range ids {
		id, err := fromProtoUUID(pid)
		if err != nil {
			continue
		}
		if m := g.takeInflight(c, id); m != nil {
			g.processed++
		}
	}
	g.mu.Unlock()
	g.wake()
}

func (g *group) nack(c *consumer, ids []*shared.UUID, action persistent.ReadReq_Nack_Action, reason string) {
	var park, exhausted []*pmsg
	g.mu.Lock()
	for _, pid := range ids {
		id, err := fromProtoUUID(pid)
		if err != nil {
			continue
		}
		m := g.takeInflight(c, id)
		if m == nil {
			continue
		}
		m.consumer = nil
		switch action {
		case persistent.ReadReq_Nack_Park:
			park = append(park, m)
		case persistent.ReadReq_Nack_Skip, persistent.ReadReq_Nack_Stop:
			g.processed++
		default: // Retry, Unknown
			if p := g.retryLocked(m); p != nil {
				exhausted = append(exhausted, p)
			}
		}
	}
	g.parkLocked(park, reason)
	g.parkLocked(exhausted, fmt.Sprintf("Reached retry count of %d", g.settings.maxRetry))
	g.mu.Unlock()
	g.wake()
}

// retryLocked queues m again with one more retry, or returns it to be parked when it has had
// MaxRetryCount retries.
func (g *group) retryLocked(m *pmsg) *pmsg {
	if m.retry >= g.settings.maxRetry {
		return m
	}
	g.requeueLocked(m)
	return nil
}

// requeueLocked queues m again, in seq order, with one more retry.
func (g *group) requeueLocked(m *pmsg) {
	m.retry++
	i, _ := slices.BinarySearchFunc(g.retries, m.seq, func(x *pmsg, seq int64) int { return int(x.seq - seq) })
	g.retries = slices.Insert(g.retries, i, m)
}

// parkedStream is where a group's parked messages go.
func (g *group) parkedStream() string { return "$persistentsubscription-" + g.key + "-parked" }

func (g *group) checkpointStream() string { return "$persistentsubscription-" + g.key + "-checkpoint" }

// parkLocked writes a link to each message in the parked stream and counts it as processed.
// Callers hold g.mu (the lock order is group, then log).
func (g *group) parkLocked(ms []*pmsg, reason string) {
	if len(ms) == 0 {
		return
	}
	l := g.ps.s.log
	evs := make([]proposed, len(ms))
	for i, m := range ms {
		evs[i] = proposed{
			id:          uuid.New(),
			eventType:   linkEventType,
			contentType: "application/octet-stream",
			data:        fmt.Appendf(nil, "%d@%s", m.rec.revision, m.rec.stream),
			meta:        fmt.Appendf(nil, `{"$reason":%q}`, reason),
		}
	}
	l.mu.Lock()
	l.writeLocked(g.parkedStream(), evs)
	l.mu.Unlock()
	g.processed += len(ms)
}

// run is the group's dispatcher.
func (g *group) run(ctx context.Context) {
	defer g.ps.wg.Done()
	l := g.ps.s.log
	for {
		l.mu.Lock()
		changed := l.changed
		l.mu.Unlock()
		next := g.step()
		t := time.NewTimer(next)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-g.deleted:
			t.Stop()
			return
		case <-changed:
		case <-g.kick:
		case <-t.C:
		}
		t.Stop()
	}
}

// step times out, dispatches and checkpoints; it returns how long to sleep at most.
func (g *group) step() time.Duration {
	now := time.Now()
	var park []*pmsg
	g.mu.Lock()
	// timeouts
	if g.settings.messageTimeout > 0 {
		var expired []*pmsg
		for _, ms := range g.inflight {
			for _, m := range ms {
				if !m.deadline.IsZero() && !now.Before(m.deadline) {
					expired = append(expired, m)
				}
			}
		}
		slices.SortFunc(expired, func(a, b *pmsg) int { return int(a.seq - b.seq) })
		for _, m := range expired {
			g.takeInflight(m.consumer, m.rec.id)
			m.consumer = nil
			if p := g.retryLocked(m); p != nil {
				park = append(park, p)
			}
		}
	}
	g.parkLocked(park, fmt.Sprintf("Reached retry count of %d", g.settings.maxRetry))
	g.dispatchLocked(now)
	cp, cpOK := g.checkpointDueLocked(now)
	sleep := maxTick
	if g.settings.messageTimeout > 0 {
		for _, ms := range g.inflight {
			for _, m := range ms {
				if d := m.deadline.Sub(now); d < sleep {
					sleep = max(d, time.Millisecond)
				}
			}
		}
	}
	if g.processed > 0 && g.processed >= g.settings.minCheckpoint {
		sleep = min(sleep, max(g.settings.checkpointAfter-now.Sub(g.lastCP), time.Millisecond))
	}
	g.mu.Unlock()
	if cpOK {
		g.writeCheckpoint(cp)
	}
	return sleep
}

// dispatchLocked hands retries, then new events, to consumers with room, until the next
// message has nowhere to go.
func (g *group) dispatchLocked(now time.Time) {
	l := g.ps.s.log
	for i := 0; i < 100_000; i++ {
		var m *pmsg
		fromLog := false
		if len(g.retries) > 0 {
			m = g.retries[0]
		} else {
			r := g.peekLocked(l)
			if r == nil {
				return
			}
			m = &pmsg{seq: g.cursor, rec: r}
			fromLog = true
		}
		c := g.chooseLocked(m)
		if c == nil {
			return
		}
		if fromLog {
			g.cursor++
		} else {
			g.retries = g.retries[1:]
		}
		m.consumer = c
		if g.settings.messageTimeout > 0 {
			m.deadline = now.Add(g.settings.messageTimeout)
		}
		g.inflight[m.rec.id] = append(g.inflight[m.rec.id], m)
		c.inflight++
		c.queue = append(c.queue, m)
		select {
		case c.signal <- struct{}{}:
		default:
		}
	}
}

// peekLocked is the next event of the source the group delivers, skipping (and counting as
// processed) those its filter leaves out; nil at the end.
func (g *group) peekLocked(l *eventLog) *record {
	l.mu.Lock()
	defer l.mu.Unlock()
	for i := 0; i < 100_000; i++ {
		var r *record
		if g.stream == allStreamName {
			if g.cursor >= int64(len(l.all)) {
				return nil
			}
			r = l.all[g.cursor]
			if isHiddenFromFilters(r.stream) {
				// Its own checkpoints and parked events: passed over without counting towards
				// the next checkpoint, or each checkpoint would cause the next.
				g.cursor++
				continue
			}
			if g.filter != nil && !g.filter.match(r) {
				g.cursor++
				g.processed++
				continue
			}
			return r
		}
		st := l.streams[g.stream]
		if st == nil || g.cursor >= int64(len(st.events)) {
			return nil
		}
		return st.events[g.cursor]
	}
	return nil
}

// chooseLocked picks the consumer for m by the strategy, or nil if it must wait.
func (g *group) chooseLocked(m *pmsg) *consumer {
	n := len(g.consumers)
	if n == 0 {
		return nil
	}
	free := func(c *consumer) bool { return c.inflight < c.buffer }
	switch g.settings.strategy {
	case dispatchToSingle:
		for _, c := range g.consumers {
			if free(c) {
				return c
			}
		}
		return nil
	case pinned:
		b := bucketOf(m.rec)
		owner := g.buckets[b]
		if owner == nil {
			counts := make(map[*consumer]int, n)
			for _, o := range g.buckets {
				if o != nil {
					counts[o]++
				}
			}
			owner = g.consumers[0]
			for _, c := range g.consumers[1:] {
				if counts[c] < counts[owner] {
					owner = c
				}
			}
			g.buckets[b] = owner
		}
		if free(owner) {
			return owner
		}
		return nil
	default:
		for k := 0; k < n; k++ {
			c := g.consumers[(g.rr+k)%n]
			if free(c) {
				g.rr = (g.rr + k + 1) % n
				return c
			}
		}
		return nil
	}
}

// bucketOf hashes the event's source stream (the linked event's for a link) into a bucket.
func bucketOf(r *record) int {
	stream := r.stream
	if r.eventType == linkEventType {
		if i := strings.IndexByte(string(r.data), '@'); i >= 0 {
			stream = string(r.data[i+1:])
		}
	}
	h := fnv.New32a()
	_, _ = h.Write([]byte(stream))
	return int(h.Sum32() % pinnedBuckets)
}

// checkpointDueLocked is the seq to checkpoint at if a checkpoint is due: after at least
// minCheckpoint processed events once checkpointAfter has passed, or maxCheckpoint at once.
func (g *group) checkpointDueLocked(now time.Time) (int64, bool) {
	if g.processed == 0 {
		return 0, false
	}
	due := g.processed >= g.settings.maxCheckpoint ||
		(g.processed >= g.settings.minCheckpoint && now.Sub(g.lastCP) >= g.settings.checkpointAfter)
	if !due {
		return 0, false
	}
	low := g.cursor - 1 // everything read is done unless outstanding
	for _, ms := range g.inflight {
		for _, m := range ms {
			low = min(low, m.seq-1)
		}
	}
	for _, m := range g.retries {
		low = min(low, m.seq-1)
	}
	for _, c := range g.consumers {
		for _, m := range c.queue {
			low = min(low, m.seq-1)
		}
	}
	g.processed = 0
	g.lastCP = now
	if low <= g.checkpoint || low < g.start {
		return 0, false
	}
	g.checkpoint = low
	return low, true
}

// writeCheckpoint records the checkpoint in the group's checkpoint stream like the real server
// (a stream revision, or "C:commit/P:prepare" for $all).
func (g *group) writeCheckpoint(seq int64) {
	l := g.ps.s.log
	l.mu.Lock()
	defer l.mu.Unlock()
	var data []byte
	if g.stream == allStreamName {
		if seq >= int64(len(l.all)) {
			return
		}
		// Point at the last event the group could deliver, not at a system event passed over
		// (such as its own checkpoints): resuming after it is the same.
		for k := 0; k < 100_000 && seq >= g.start && isHiddenFromFilters(l.all[seq].stream); k++ {
			seq--
		}
		if seq < g.start || isHiddenFromFilters(l.all[seq].stream) {
			return
		}
		p := l.all[seq].pos
		data = fmt.Appendf(nil, `"C:%d/P:%d"`, p, p)
	} else {
		data = fmt.Appendf(nil, "%d", seq)
	}
	l.writeLocked(g.checkpointStream(), []proposed{{id: uuid.New(), eventType: checkpointEventType, contentType: "application/json", data: data}})
}

// PersistentConsumers is the number of consumers connected to a group (stream "$all" for a
// group on $all); 0 for a missing group. Tests wait on it instead of sleeping.
func (s *Server) PersistentConsumers(stream, group string) int {
	g := s.ps.group(stream, group)
	if g == nil {
		return 0
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.consumers)
}

// PersistentOutstanding is the number of a group's events handed out and not yet acked,
// skipped or parked, plus those waiting to be retried; 0 for a missing group.
func (s *Server) PersistentOutstanding(stream, group string) int {
	g := s.ps.group(stream, group)
	if g == nil {
		return 0
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	n := len(g.retries)
	for _, ms := range g.inflight {
		n += len(ms)
	}
	return n
}

func (p *persistentSubs) group(stream, name string) *group {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.groups[groupKey(stream, name)]
}
