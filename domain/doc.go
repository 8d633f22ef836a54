// Package domain holds usersync's business rules: the events that record
// every change to a FunnelKit contact's user, the user aggregate rebuilt from
// them (Evolve), and the pure decisions that turn a webhook and a contact read
// from the CRM into new events (Decide*). It does no I/O: the event store and
// the CRM are ports (small interfaces) that adapters implement.
package domain
