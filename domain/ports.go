package domain

import "context"

// CRM is the port to the CRM (FunnelKit) webhooks read contacts from.
type CRM interface {
	Contact(ctx context.Context, id ContactID) (CRMContact, error)
	Tags(ctx context.Context) ([]Tag, error)
}

// Secrets is the port that makes passwords: generation needs randomness,
// sealing needs the key store.
type Secrets interface {
	NewPassword() (string, error)
	Hash(password string) (string, error)
	// Seal stores a fresh key under keyID and returns the password sealed with it.
	Seal(ctx context.Context, keyID, password string) ([]byte, error)
	// Shred destroys a key; what it sealed is unreadable from then on.
	Shred(ctx context.Context, keyID string) error
}

// FieldWriter writes contact fields in the CRM (FunnelKit's POST
// v3/contacts/{id}/fields). The password return writes the generated
// password with it.
type FieldWriter interface {
	SetFields(ctx context.Context, id ContactID, fields map[string]string) error
}

// Unsealer opens sealed passwords and destroys their keys.
type Unsealer interface {
	// Unseal returns the password sealed under keyID.
	Unseal(ctx context.Context, keyID string, sealed []byte) ([]byte, error)
	// Shred destroys the key keyID; shredding a missing key is no error.
	Shred(ctx context.Context, keyID string) error
}

// Mailer sends the welcome email: the login and a login link, never the
// password. key names this one mail (the user's id): sending it again with
// the same key, after a crash between the send and its record, must not
// make a second mail where the transport can tell (the outbox replaces the
// file; SMTP receivers see the same Message-ID). transport names how it
// went out (smtp or outbox).
type Mailer interface {
	SendWelcome(ctx context.Context, key, to, login string) (transport string, err error)
}
