package domain

import "context"

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
// password. transport names how it went out (smtp or outbox).
type Mailer interface {
	SendWelcome(ctx context.Context, to, login string) (transport string, err error)
}
