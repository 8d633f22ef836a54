// Package esdbtest is an in-process EventStoreDB stand-in: a gRPC server on loopback built on
// the real client's exported proto packages (EventStore-Client-Go/v4 v4.2.0), so that the
// real client can be tested end to end where no EventStoreDB server can run.
//
// Work in progress; see the final package comment for what it implements and what it does not.
package esdbtest
