package esdbtest

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"strconv"

	"github.com/EventStore/EventStore-Client-Go/v4/protos/shared"
	"github.com/EventStore/EventStore-Client-Go/v4/protos/streams"
	"github.com/google/uuid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

type sharedEmpty = shared.Empty

// instanceID names this stand-in in gossip answers.
var instanceID = uuid.MustParse("5e1f0000-0000-4000-8000-000000000001")

// maxAppendMessages bounds how many messages one Append call may send, so a broken client
// cannot make the stand-in loop for ever.
const maxAppendMessages = 1 << 20

// streamsService implements Streams (Append, Read, Delete, Tombstone).
type streamsService struct {
	streams.UnimplementedStreamsServer
	s *Server
}

// expectedKind is the expected-version option of an append or delete.
type expectedKind int

const (
	expectAny expectedKind = iota
	expectNoStream
	expectStreamExists
	expectRevision
)

type expectedVersion struct {
	kind     expectedKind
	revision uint64
}

func (e expectedVersion) String() string {
	switch e.kind {
	case expectNoStream:
		return "no_stream"
	case expectStreamExists:
		return "stream_exists"
	case expectRevision:
		return strconv.FormatUint(e.revision, 10)
	default:
		return "any"
	}
}

// appendOutcome is what the log decided about an append.
type appendOutcome int

const (
	outcomeWritten appendOutcome = iota
	outcomeIdempotent
	outcomeWrongVersion
	outcomeDeleted
	outcomeEmpty
)

type appendResult struct {
	outcome appendOutcome
	// lastRevision is the revision of the last event written (or matched, or the stream's
	// current one for an empty append or a wrong version); -1 means no stream.
	lastRevision int64
	pos          uint64
	hasPos       bool
}

// appendLocked applies the real server's commit check (S: IndexWriter.CheckCommit) and writes.
func (l *eventLog) appendLocked(stream string, exp expectedVersion, events []proposed) appendResult {
	st := l.streams[stream]
	if st != nil && st.tombstoned {
		return appendResult{outcome: outcomeDeleted}
	}
	cur := st.lastRevision()
	softDeleted := st != nil && st.softDeleted
	wrong := appendResult{outcome: outcomeWrongVersion, lastRevision: cur}

	if len(events) == 0 {
		ok := false
		switch exp.kind {
		case expectAny:
			ok = true
		case expectNoStream:
			ok = cur < 0 || softDeleted
		case expectStreamExists:
			ok = cur >= 0 && !softDeleted
		case expectRevision:
			ok = int64(exp.revision) == cur
		}
		if !ok {
			return wrong
		}
		return appendResult{outcome: outcomeEmpty, lastRevision: cur}
	}

	switch exp.kind {
	case expectAny, expectStreamExists:
		if exp.kind == expectStreamExists && (cur < 0 || softDeleted) {
			return wrong
		}
		// Only the in-memory cache is consulted: a miss on the first id writes the events
		// (again, if they were written before and forgotten).
		var last *record
		for i, e := range events {
			r, ok := l.cache.get(e.id)
			if !ok || r.stream != stream {
				if i == 0 {
					return l.write(stream, events)
				}
				// Part of the batch was written before: the real server reports a corrupted
				// idempotent write; the stand-in answers wrong expected version.
				return wrong
			}
			last = r
		}
		return appendResult{outcome: outcomeIdempotent, lastRevision: int64(last.revision), pos: last.pos, hasPos: true}
	}

	want := int64(-1) // no_stream
	if exp.kind == expectRevision {
		want = int64(exp.revision)
	}
	if exp.kind == expectNoStream && softDeleted {
		// A soft-deleted stream can be recreated with no_stream.
		return l.write(stream, events)
	}
	switch {
	case want == cur:
		return l.write(stream, events)
	case want > cur:
		return wrong
	}
	// The stream is past the expected version: the same ids at the same revisions are a retry
	// of an append that succeeded; anything else is a conflict.
	var last *record
	for i, e := range events {
		rev := want + 1 + int64(i)
		if rev > cur || st.events[rev].id != e.id {
			return wrong
		}
		last = st.events[rev]
	}
	return appendResult{outcome: outcomeIdempotent, lastRevision: int64(last.revision), pos: last.pos, hasPos: true}
}

func (l *eventLog) write(stream string, events []proposed) appendResult {
	recs := l.writeLocked(stream, events)
	last := recs[len(recs)-1]
	return appendResult{outcome: outcomeWritten, lastRevision: int64(last.revision), pos: last.pos, hasPos: true}
}

// Append reads the whole client stream, then checks size and expected version and writes.
func (ss *streamsService) Append(stream streams.Streams_AppendServer) error {
	s := ss.s
	var (
		opts   *streams.AppendReq_Options
		events []proposed
		size   int
	)
	for i := 0; ; i++ {
		if i >= maxAppendMessages {
			return status.Errorf(codes.InvalidArgument, "esdb stand-in: more than %d messages in one append", maxAppendMessages)
		}
		req, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return err
		}
		switch c := req.Content.(type) {
		case *streams.AppendReq_Options_:
			if opts != nil {
				return status.Error(codes.InvalidArgument, "esdb stand-in: append options sent twice")
			}
			opts = c.Options
		case *streams.AppendReq_ProposedMessage_:
			if opts == nil {
				return status.Error(codes.InvalidArgument, "esdb stand-in: append event before options")
			}
			p, err := toProposed(c.ProposedMessage)
			if err != nil {
				return err
			}
			size += p.size()
			events = append(events, p)
		}
	}
	if opts == nil {
		return status.Error(codes.InvalidArgument, "esdb stand-in: append without options")
	}
	name := string(opts.GetStreamIdentifier().GetStreamName())
	if name == "" {
		return status.Error(codes.InvalidArgument, "esdb stand-in: append to an empty stream name")
	}
	if size > s.opts.MaxAppendSize {
		stream.SetTrailer(metadata.Pairs(
			"exception", "maximum-append-size-exceeded",
			"maximum-append-size", strconv.Itoa(s.opts.MaxAppendSize)))
		return status.Errorf(codes.InvalidArgument, "Maximum Append Size of %d Exceeded.", s.opts.MaxAppendSize)
	}
	exp := expectedVersion{kind: expectAny}
	switch e := opts.ExpectedStreamRevision.(type) {
	case *streams.AppendReq_Options_NoStream:
		exp.kind = expectNoStream
	case *streams.AppendReq_Options_StreamExists:
		exp.kind = expectStreamExists
	case *streams.AppendReq_Options_Revision:
		exp = expectedVersion{kind: expectRevision, revision: e.Revision}
	}

	s.log.mu.Lock()
	res := s.log.appendLocked(name, exp, events)
	s.log.mu.Unlock()
	s.logger.Debug("esdb stand-in append", "stream", name, "expected", exp.String(), "events", len(events), "outcome", int(res.outcome))

	if res.outcome == outcomeDeleted {
		stream.SetTrailer(deletedTrailer(name))
		return status.Errorf(codes.FailedPrecondition, "Event stream '%s' is deleted.", name)
	}
	if res.outcome == outcomeWritten && s.takeLostAppend() {
		return status.Error(codes.Unavailable, "esdb stand-in: append committed, answer lost (fault injected)")
	}
	if res.outcome == outcomeWrongVersion {
		return stream.SendAndClose(&streams.AppendResp{Result: &streams.AppendResp_WrongExpectedVersion_{
			WrongExpectedVersion: wrongVersion(exp, res.lastRevision),
		}})
	}
	ok := &streams.AppendResp_Success{}
	if res.lastRevision < 0 {
		ok.CurrentRevisionOption = &streams.AppendResp_Success_NoStream{NoStream: &shared.Empty{}}
	} else {
		ok.CurrentRevisionOption = &streams.AppendResp_Success_CurrentRevision{CurrentRevision: uint64(res.lastRevision)}
	}
	if res.hasPos {
		ok.PositionOption = &streams.AppendResp_Success_Position{Position: &streams.AppendResp_Position{
			CommitPosition: res.pos, PreparePosition: res.pos,
		}}
	} else {
		ok.PositionOption = &streams.AppendResp_Success_NoPosition{NoPosition: &shared.Empty{}}
	}
	return stream.SendAndClose(&streams.AppendResp{Result: &streams.AppendResp_Success_{Success: ok}})
}

func (s *Server) takeLostAppend() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.loseAppends > 0 {
		s.loseAppends--
		return true
	}
	return false
}

// wrongVersion fills both the current and the legacy (20.6.0) fields, as the real server does.
func wrongVersion(exp expectedVersion, current int64) *streams.AppendResp_WrongExpectedVersion {
	w := &streams.AppendResp_WrongExpectedVersion{}
	if current < 0 {
		w.CurrentRevisionOption = &streams.AppendResp_WrongExpectedVersion_CurrentNoStream{CurrentNoStream: &shared.Empty{}}
		w.CurrentRevisionOption_20_6_0 = &streams.AppendResp_WrongExpectedVersion_NoStream_20_6_0{NoStream_20_6_0: &shared.Empty{}}
	} else {
		w.CurrentRevisionOption = &streams.AppendResp_WrongExpectedVersion_CurrentRevision{CurrentRevision: uint64(current)}
		w.CurrentRevisionOption_20_6_0 = &streams.AppendResp_WrongExpectedVersion_CurrentRevision_20_6_0{CurrentRevision_20_6_0: uint64(current)}
	}
	switch exp.kind {
	case expectAny:
		w.ExpectedRevisionOption = &streams.AppendResp_WrongExpectedVersion_ExpectedAny{ExpectedAny: &shared.Empty{}}
		w.ExpectedRevisionOption_20_6_0 = &streams.AppendResp_WrongExpectedVersion_Any_20_6_0{Any_20_6_0: &shared.Empty{}}
	case expectStreamExists:
		w.ExpectedRevisionOption = &streams.AppendResp_WrongExpectedVersion_ExpectedStreamExists{ExpectedStreamExists: &shared.Empty{}}
		w.ExpectedRevisionOption_20_6_0 = &streams.AppendResp_WrongExpectedVersion_StreamExists_20_6_0{StreamExists_20_6_0: &shared.Empty{}}
	case expectNoStream:
		w.ExpectedRevisionOption = &streams.AppendResp_WrongExpectedVersion_ExpectedNoStream{ExpectedNoStream: &shared.Empty{}}
		// The legacy field has no no_stream case: the server sends -1 as an unsigned revision.
		w.ExpectedRevisionOption_20_6_0 = &streams.AppendResp_WrongExpectedVersion_ExpectedRevision_20_6_0{ExpectedRevision_20_6_0: ^uint64(0)}
	case expectRevision:
		w.ExpectedRevisionOption = &streams.AppendResp_WrongExpectedVersion_ExpectedRevision{ExpectedRevision: exp.revision}
		w.ExpectedRevisionOption_20_6_0 = &streams.AppendResp_WrongExpectedVersion_ExpectedRevision_20_6_0{ExpectedRevision_20_6_0: exp.revision}
	}
	return w
}

func toProposed(m *streams.AppendReq_ProposedMessage) (proposed, error) {
	id, err := fromProtoUUID(m.GetId())
	if err != nil {
		return proposed{}, status.Errorf(codes.InvalidArgument, "esdb stand-in: event id: %v", err)
	}
	typ := m.GetMetadata()["type"]
	if typ == "" {
		return proposed{}, status.Error(codes.InvalidArgument, "esdb stand-in: event without a type")
	}
	ct := m.GetMetadata()["content-type"]
	if ct == "" {
		ct = "application/octet-stream"
	}
	return proposed{id: id, eventType: typ, contentType: ct, data: m.GetData(), meta: m.GetCustomMetadata()}, nil
}

func fromProtoUUID(u *shared.UUID) (uuid.UUID, error) {
	switch v := u.GetValue().(type) {
	case *shared.UUID_Structured_:
		var b [16]byte
		binary.BigEndian.PutUint64(b[:8], uint64(v.Structured.GetMostSignificantBits()))
		binary.BigEndian.PutUint64(b[8:], uint64(v.Structured.GetLeastSignificantBits()))
		return uuid.UUID(b), nil
	case *shared.UUID_String_:
		return uuid.Parse(v.String_)
	}
	return uuid.Nil, errors.New("missing")
}

func protoUUID(id uuid.UUID) *shared.UUID {
	return &shared.UUID{Value: &shared.UUID_Structured_{Structured: &shared.UUID_Structured{
		MostSignificantBits:  int64(binary.BigEndian.Uint64(id[:8])),
		LeastSignificantBits: int64(binary.BigEndian.Uint64(id[8:])),
	}}}
}

func deletedTrailer(stream string) metadata.MD {
	return metadata.Pairs("exception", "stream-deleted", "stream-name", stream)
}

// Read serves stream and $all reads, and catch-up subscriptions (count_option=subscription).
func (ss *streamsService) Read(req *streams.ReadReq, stream streams.Streams_ReadServer) error {
	opts := req.GetOptions()
	if opts == nil {
		return status.Error(codes.InvalidArgument, "esdb stand-in: read without options")
	}
	if _, ok := opts.CountOption.(*streams.ReadReq_Options_Subscription); ok {
		return ss.s.subscribe(opts, stream)
	}
	return ss.s.read(opts, stream)
}

func (s *Server) read(opts *streams.ReadReq_Options, stream grpc.ServerStream) error {
	count := opts.GetCount()
	backwards := opts.GetReadDirection() == streams.ReadReq_Options_Backwards
	str := opts.GetUuidOption().GetString_() != nil

	var out []*record
	s.log.mu.Lock()
	switch so := opts.StreamOption.(type) {
	case *streams.ReadReq_Options_Stream:
		name := string(so.Stream.GetStreamIdentifier().GetStreamName())
		st := s.log.streams[name]
		if st != nil && st.tombstoned {
			s.log.mu.Unlock()
			stream.SetTrailer(deletedTrailer(name))
			return status.Errorf(codes.FailedPrecondition, "Event stream '%s' is deleted.", name)
		}
		if st == nil || len(st.events) == 0 || st.softDeleted {
			s.log.mu.Unlock()
			return stream.SendMsg(&streams.ReadResp{Content: &streams.ReadResp_StreamNotFound_{
				StreamNotFound: &streams.ReadResp_StreamNotFound{StreamIdentifier: &shared.StreamIdentifier{StreamName: []byte(name)}},
			}})
		}
		out = selectStream(st.readable(), so.Stream, backwards, count)
	case *streams.ReadReq_Options_All:
		if p, ok := so.All.AllOption.(*streams.ReadReq_Options_AllOptions_Position); ok && !s.log.validPosition(p.Position.GetCommitPosition()) {
			s.log.mu.Unlock()
			return errInvalidPosition
		}
		out = selectAll(s.log, so.All, backwards, count)
	default:
		s.log.mu.Unlock()
		return status.Error(codes.InvalidArgument, "esdb stand-in: read without a stream or $all option")
	}
	s.log.mu.Unlock()

	for _, r := range out {
		if err := stream.SendMsg(&streams.ReadResp{Content: &streams.ReadResp_Event{Event: s.readEvent(r, opts.GetResolveLinks(), str)}}); err != nil {
			return err
		}
	}
	return nil
}

// selectStream picks a stream read's events: forwards from start/revision (inclusive),
// backwards from end/revision (inclusive).
func selectStream(evs []*record, so *streams.ReadReq_Options_StreamOptions, backwards bool, count uint64) []*record {
	var out []*record
	if !backwards {
		from := uint64(0)
		switch r := so.RevisionOption.(type) {
		case *streams.ReadReq_Options_StreamOptions_End:
			return nil
		case *streams.ReadReq_Options_StreamOptions_Revision:
			from = r.Revision
		}
		for _, e := range evs {
			if uint64(len(out)) >= count {
				break
			}
			if e.revision >= from {
				out = append(out, e)
			}
		}
		return out
	}
	from := ^uint64(0)
	switch r := so.RevisionOption.(type) {
	case *streams.ReadReq_Options_StreamOptions_Start:
		from = 0
	case *streams.ReadReq_Options_StreamOptions_Revision:
		from = r.Revision
	}
	for i := len(evs) - 1; i >= 0 && uint64(len(out)) < count; i-- {
		if evs[i].revision <= from {
			out = append(out, evs[i])
		}
	}
	return out
}

// selectAll picks a $all read's events: forwards from a position includes it, backwards from a
// position excludes it.
func selectAll(l *eventLog, ao *streams.ReadReq_Options_AllOptions, backwards bool, count uint64) []*record {
	var out []*record
	if !backwards {
		i := 0
		switch p := ao.AllOption.(type) {
		case *streams.ReadReq_Options_AllOptions_End:
			return nil
		case *streams.ReadReq_Options_AllOptions_Position:
			i = l.indexAfter(p.Position.GetCommitPosition(), true)
		}
		for ; i < len(l.all) && uint64(len(out)) < count; i++ {
			out = append(out, l.all[i])
		}
		return out
	}
	i := len(l.all) - 1
	switch p := ao.AllOption.(type) {
	case *streams.ReadReq_Options_AllOptions_Start:
		return nil
	case *streams.ReadReq_Options_AllOptions_Position:
		i = l.indexAfter(p.Position.GetCommitPosition(), true) - 1
	}
	for ; i >= 0 && uint64(len(out)) < count; i-- {
		out = append(out, l.all[i])
	}
	return out
}

// readEvent is a record as the Streams service sends it, with the link resolved if asked.
func (s *Server) readEvent(r *record, resolve, stringIDs bool) *streams.ReadResp_ReadEvent {
	ev := &streams.ReadResp_ReadEvent{
		Event:    recordedEvent(r, stringIDs),
		Position: &streams.ReadResp_ReadEvent_CommitPosition{CommitPosition: r.pos},
	}
	if resolve && r.eventType == linkEventType {
		if target := s.resolveLink(r); target != nil {
			ev.Link = ev.Event
			ev.Event = recordedEvent(target, stringIDs)
		}
	}
	return ev
}

func recordedEvent(r *record, stringIDs bool) *streams.ReadResp_ReadEvent_RecordedEvent {
	id := protoUUID(r.id)
	if stringIDs {
		id = &shared.UUID{Value: &shared.UUID_String_{String_: r.id.String()}}
	}
	return &streams.ReadResp_ReadEvent_RecordedEvent{
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

func systemMetadata(r *record) map[string]string {
	return map[string]string{
		"type":         r.eventType,
		"content-type": r.contentType,
		"created":      strconv.FormatInt(r.created, 10),
	}
}

// resolveLink finds the event a "$>" link points at ("REVISION@STREAM"), or nil.
func (s *Server) resolveLink(r *record) *record {
	var rev uint64
	var stream string
	for i, c := range string(r.data) {
		if c == '@' {
			n, err := strconv.ParseUint(string(r.data[:i]), 10, 64)
			if err != nil {
				return nil
			}
			rev, stream = n, string(r.data[i+1:])
			break
		}
	}
	if stream == "" {
		return nil
	}
	s.log.mu.Lock()
	defer s.log.mu.Unlock()
	st := s.log.streams[stream]
	if st == nil || rev >= uint64(len(st.events)) {
		return nil
	}
	return st.events[rev]
}

// Delete soft-deletes a stream: it writes $tb=long.MaxValue to $$stream; reads then answer
// stream_not_found and the next append recreates the stream with the following revisions.
func (ss *streamsService) Delete(ctx context.Context, req *streams.DeleteReq) (*streams.DeleteResp, error) {
	s := ss.s
	o := req.GetOptions()
	name := string(o.GetStreamIdentifier().GetStreamName())
	exp := expectedVersion{kind: expectAny}
	switch e := o.GetExpectedStreamRevision().(type) {
	case *streams.DeleteReq_Options_NoStream:
		exp.kind = expectNoStream
	case *streams.DeleteReq_Options_StreamExists:
		exp.kind = expectStreamExists
	case *streams.DeleteReq_Options_Revision:
		exp = expectedVersion{kind: expectRevision, revision: e.Revision}
	}
	s.log.mu.Lock()
	defer s.log.mu.Unlock()
	st := s.log.streams[name]
	if st != nil && st.tombstoned {
		_ = grpc.SetTrailer(ctx, deletedTrailer(name))
		return nil, status.Errorf(codes.FailedPrecondition, "Event stream '%s' is deleted.", name)
	}
	if err := checkDeleteVersion(ctx, name, exp, st.lastRevision()); err != nil {
		return nil, err
	}
	recs := s.log.writeLocked("$$"+name, []proposed{{id: uuid.New(), eventType: metadataEventType, contentType: "application/json", data: []byte(softDeleteMeta)}})
	p := recs[0].pos
	return &streams.DeleteResp{PositionOption: &streams.DeleteResp_Position_{Position: &streams.DeleteResp_Position{CommitPosition: p, PreparePosition: p}}}, nil
}

// Tombstone hard-deletes a stream: reads and appends then fail with stream-deleted for ever.
func (ss *streamsService) Tombstone(ctx context.Context, req *streams.TombstoneReq) (*streams.TombstoneResp, error) {
	s := ss.s
	o := req.GetOptions()
	name := string(o.GetStreamIdentifier().GetStreamName())
	exp := expectedVersion{kind: expectAny}
	switch e := o.GetExpectedStreamRevision().(type) {
	case *streams.TombstoneReq_Options_NoStream:
		exp.kind = expectNoStream
	case *streams.TombstoneReq_Options_StreamExists:
		exp.kind = expectStreamExists
	case *streams.TombstoneReq_Options_Revision:
		exp = expectedVersion{kind: expectRevision, revision: e.Revision}
	}
	s.log.mu.Lock()
	defer s.log.mu.Unlock()
	st := s.log.streams[name]
	if st != nil && st.tombstoned {
		_ = grpc.SetTrailer(ctx, deletedTrailer(name))
		return nil, status.Errorf(codes.FailedPrecondition, "Event stream '%s' is deleted.", name)
	}
	if err := checkDeleteVersion(ctx, name, exp, st.lastRevision()); err != nil {
		return nil, err
	}
	r := s.log.writeTombstoneLocked(name)
	return &streams.TombstoneResp{PositionOption: &streams.TombstoneResp_Position_{Position: &streams.TombstoneResp_Position{CommitPosition: r.pos, PreparePosition: r.pos}}}, nil
}

// checkDeleteVersion answers a delete's wrong expected version as the real server does: an
// error (not a message) with trailers exception=wrong-expected-version.
func checkDeleteVersion(ctx context.Context, name string, exp expectedVersion, cur int64) error {
	ok := true
	switch exp.kind {
	case expectNoStream:
		ok = cur < 0
	case expectStreamExists:
		ok = cur >= 0
	case expectRevision:
		ok = int64(exp.revision) == cur
	}
	if ok {
		return nil
	}
	actual := "-1"
	if cur >= 0 {
		actual = strconv.FormatInt(cur, 10)
	}
	_ = grpc.SetTrailer(ctx, metadata.Pairs("exception", "wrong-expected-version", "expected-version", exp.String(), "actual-version", actual))
	return status.Errorf(codes.FailedPrecondition, "Append failed due to WrongExpectedVersion. Stream: %s, Expected version: %s, Actual version: %s", name, exp.String(), actual)
}
