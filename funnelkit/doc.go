// Package funnelkit is usersync's client for the FunnelKit Automations REST
// API of a WordPress site: it reads a contact with its tags and custom fields
// (Contact), finds a contact by email (FindContact), lists the tag catalogue
// (Tags) and writes custom fields (SetFields, used to return a generated
// password).
//
// It is the one place that turns a FunnelKit contact into domain values
// (domain.CRMContact). Every failure is a *Error whose Kind says what went
// wrong and what to fix; an empty, HTML or unparseable answer is always an
// error, never an empty contact, so a caller never changes a user from a
// failed read. The Application Password never appears in an error, a log
// line or a formatted Config or Client.
//
// The package simulator holds an in-process FunnelKit stand-in speaking the
// same API, for end-to-end tests and the demo mode.
package funnelkit
