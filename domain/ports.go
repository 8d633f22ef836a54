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
