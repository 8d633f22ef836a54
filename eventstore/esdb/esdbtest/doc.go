// Package esdbtest is an in-process EventStoreDB stand-in: a gRPC server on loopback built on
// the real client's exported proto packages (EventStore-Client-Go/v4 v4.2.0: protos/streams,
// persistent, shared, serverfeatures, gossip), so that code using the real client can be
// tested end to end where no EventStoreDB server can run. Its semantics copy the real
// server's as the project's EventStoreDB reference describes them (read from the v4.2.0 client
// and the server source); where the reference is silent, the choice made is written below.
// Stand-in behaviour and figures are not server behaviour and figures.
//
//	srv := esdbtest.New(t)                      // 127.0.0.1, a free port, closed at cleanup
//	conf, _ := esdb.ParseConnectionString(srv.ConnString())
//	client, _ := esdb.NewClient(conf)
//
// # What it implements
//
//   - ServerFeatures/GetSupportedMethods: version 24.10.0, persistent "create" with feature
//     "all" (so the client allows persistent subscriptions to $all). Gossip/Read: one member,
//     itself, leader and alive, so cluster connection strings work.
//   - Streams/Append: reads the whole client stream before answering; expected any, no_stream,
//     stream_exists or a revision; a wrong expected version is a normal answer carrying
//     current_revision/current_no_stream, expected_* and the legacy 20.6.0 fields. Idempotency
//     by event id as the server's commit check: with a revision (or no_stream) the stream has
//     passed, the sent ids are compared with the events after it: all equal answers the original
//     result (the last matched event's revision and position), else wrong expected version;
//     with any/stream_exists only a bounded in-memory id cache (Options.IDCacheSize, emptied by
//     ForgetEventIDs and Restart) is consulted, and a miss writes duplicates. The size limit
//     (Options.MaxAppendSize, 1 MiB by default; data + custom metadata + 2 × type length) is
//     answered InvalidArgument with trailers exception=maximum-append-size-exceeded and
//     maximum-append-size. Every event gets metadata type, content-type and created (.NET
//     ticks). Positions: commit == prepare == the event's offset in an imagined log, increasing
//     with gaps, the first one at 128 (never 0); each Start/Restart writes an
//     $epoch-information event, so $all holds $-streams like the real one.
//   - An empty append (no events) writes nothing: it checks the expected version (wrong
//     expected version as usual) and answers Success with the current revision (or no_stream)
//     and no_position. (Chosen from the server's commit check for an empty write; the v4.2.0
//     client turns that answer into NextExpectedVersion 0 for no_stream and positions 0.)
//   - Streams/Read: stream reads from start/revision/end, forwards (inclusive) or backwards
//     (inclusive), with a count; $all reads from start/position/end, forwards including the
//     position, backwards excluding it. A position inside a record (neither 0, nor an event's,
//     nor the end or beyond) is InvalidArgument "Trying to read from an invalid position.", as
//     the real server answers when the record it reads there is not one; catch-up subscriptions
//     from such a position fail the same way. A missing stream is one stream_not_found message. A tombstoned stream is
//     FailedPrecondition with trailers exception=stream-deleted and stream-name. Plain reads
//     send only event and stream_not_found messages (the v4.2.0 client panics on others).
//     resolve_links resolves "$>" links ("REV@STREAM").
//   - Streams/Delete is a soft delete: it writes $metadata {"$tb":long.MaxValue} to $$stream;
//     reads then answer stream_not_found; the next append recreates the stream, its revisions
//     continuing (no_stream is accepted for that). Streams/Tombstone writes $streamDeleted and
//     refuses reads, appends and deletes for ever. A delete's wrong expected version is
//     FailedPrecondition with trailer exception=wrong-expected-version.
//   - Catch-up subscriptions to $all and to a stream: confirmation first, then the events
//     strictly after the start (a stream's Start means from revision 0), caught_up when it
//     first reaches the end, then live events. Filtered $all subscriptions (stream name or
//     event type; prefixes or regex) never show $epoch-information,
//     $persistentSubscriptionConfig or $persistentsubscription-* streams, and send a
//     checkpoint every window × multiplier events considered (window 32 when the client sends
//     none) plus one at the end of catch-up, at the position of the last event considered;
//     unfiltered ones send no checkpoints. fell_behind is never sent.
//   - Persistent subscriptions (Create, Delete, the bidi Read with Ack and Nack) to $all (with an
//     optional filter) and to a stream: RoundRobin, DispatchToSingle, Pinned (1,024 buckets by
//     source stream, a free bucket taken by the consumer owning the fewest, waiting if its owner
//     is full), each consumer's buffer_size, retries before new events, retry_count on each
//     delivery, Nack park/retry/skip/stop (stop as skip, unknown as retry), MaxRetryCount then
//     parked as a "$>" link in $persistentsubscription-{stream}::{group}-parked, message
//     timeouts retried, a leaving consumer's unacked events (all it was handed) retried to the
//     others at once with retry_count one higher and never parked there, checkpoints
//     ($SubscriptionCheckpoint in ...-checkpoint: a revision, or "C:x/P:y") after
//     CheckpointLowerBound events and CheckpointAfter, or CheckpointUpperBound at once, at the
//     last event before the oldest one not yet done; Restart resumes after the checkpoint, so
//     events acknowledged after it come again (at least once). An existing group is
//     AlreadyExists, a missing one NotFound; MaxSubscriberCount is enforced. A start revision or
//     position is the first event delivered; End is the end at creation.
//   - A permissive keepalive policy (KeepalivePolicy) so the client's 10 s pings get no GOAWAY.
//   - Faults on request: DropSubscriptions, NotLeader, SetUnavailable, SetAccessDenied, SetLatency (also on
//     GetSupportedMethods and Gossip: over 5 s, (re)connecting fails as with a slow node),
//     CloseConnections, LoseAppendAnswers, Stop/Restart; ForgetEventIDs. Inspection for
//     tests: Head, StreamLen, Appends, PersistentConsumers, PersistentOutstanding.
//   - Options.DataFile (the command's --data): the log in an append-only JSON-lines file,
//     reloaded at Start; a last line cut short by a crash is dropped. Persistent subscription
//     groups are events too (the set of groups in $persistentSubscriptionConfig, checkpoints
//     in their streams), so they come back with the log and resume after their checkpoints.
//
// # What it does not implement
//
//   - TLS, authentication, users and ACLs (every call is allowed; credentials are ignored).
//   - BatchAppend, transactions, projections, the HTTP API (so the client's HTTP fallbacks
//     for persistent subscription info, listing, replaying parked messages and restarting the
//     subsystem fail), PersistentSubscriptions Update, GetInfo, List, ReplayParked and
//     RestartSubsystem (Unimplemented), the PinnedByCorrelation strategy.
//   - Stream metadata other than the soft delete's $tb: $maxAge, $maxCount, $tb set by hand,
//     $acl, ... are stored as events and not applied; no scavenging; soft-deleted events stay in
//     $all.
//   - Real clustering: one node, always leader; NotLeader names this same node; no
//     replication, no follower reads, no elections.
//   - The server's exact byte positions (sizes are approximated), its partial-idempotency
//     ("corrupted idempotency") answer (answered here as wrong expected version), the real
//     id cache's size in bytes (here a count), its Pinned hash function (FNV-1a here: the
//     bucket of a stream differs), its parked-message metadata (here {"$reason": ...}), and
//     any deadline or size limit on reads other than the gRPC defaults.
//   - Catch-up subscriptions never fall behind (fell_behind) and have no live buffer limit;
//     checkpoints are only for filtered $all subscriptions; SetLatency delays the start of a
//     call, not each message of a stream.
//   - Persistent subscriptions: no statistics, no live/history buffer or read batch sizes, no
//     extra statistics; ResolveLinkTos only for "$>" links; the config event's JSON is the
//     stand-in's own (not the server's PersistentConfig1 format); in-flight state is lost at
//     Restart like at a leader change (resuming after the last checkpoint). A checkpoint on
//     $all never points at a system event ($epoch-information, $persistentSubscriptionConfig,
//     $persistentsubscription-*), which groups on $all pass over without delivering.
package esdbtest
