// Package eventstore holds usersync's event store: the Store interface that
// extends domain.EventStore with a global, ordered log (ReadAll, Subscribe,
// Head), and SQLite, the embedded implementation kept in one SQLite file.
//
// SQLite writes through a single goroutine that does group commit: the
// appends that queue up while a transaction is being made durable are
// checked against their expected versions (held in memory) and written
// together in the next transaction, so one fsync acknowledges many appends.
// While an fsync runs the writer keeps gathering appends (up to a wide
// batch) rather than committing each trickle at once, and the commits made
// meanwhile share the next fsync.
// Positions are dense (1, 2, 3, ...) and an append is acknowledged only once
// it is on disk: the write-ahead log is fsynced, pipelined with the next
// commit, before anyone is answered or any reader sees the events. Reads go
// through their own connections and the SQLite API directly, which keeps a
// full replay (ReadAll) fast.
//
// Subscriptions are generic: Follow turns any Feed (a ReadAll plus a Changed
// signal) into a gap-free, duplicate-free stream of events in position order
// that catches up from a position and then goes live.
//
// The package memory holds an in-memory Store for unit tests; the package
// eventstoretest holds a conformance suite every Store adapter should pass;
// the package pipeline feeds the log to its consumers through Watermill.
package eventstore
