// Package mail composes and delivers the welcome email usersync sends to a
// newly created user when a FunnelKit webhook asks for it
// (send_notification).
//
// The welcome email gives the user's login and, when known, a login link. It
// never carries a password: [Welcome] has no password field at all, and the
// body tells the user to use "Lost your password?" on the login page.
//
// [Compose] builds the RFC 5322 message. A [Sender] delivers it once per call:
//
//   - [SMTP] speaks SMTP to the relay configured with
//     --smtp-url smtp://user:pass@host:port (or smtps:// for implicit TLS),
//     upgrading with STARTTLS when the server offers it and authenticating
//     with AUTH PLAIN when credentials are given;
//   - [Outbox] writes the message as an .eml file into a directory
//     (DATA/outbox/) when no SMTP relay is configured.
//
// [NewMailer] is what the server uses: it checks --mail-from, picks SMTP
// or the outbox from the flags, and [Mailer.SendWelcome] composes and
// sends one welcome email.
//
// Senders never retry: the caller (a process manager) does, guided by
// [SendError.Temporary]. The SMTP password never appears in errors or in the
// String, GoString or slog output of an [SMTP].
//
// The smtptest subpackage runs a real SMTP server (github.com/emersion/go-smtp)
// on a loopback port for tests.
package mail
