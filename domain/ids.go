package domain

import (
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strconv"
	"strings"
)

// ContactID is a FunnelKit contact id: a positive integer.
type ContactID uint64

// ErrInvalidContactID is matched by every error ParseContactID returns.
var ErrInvalidContactID = errors.New("contact_id must be a positive integer")

// ParseContactID reads a contact id as FunnelKit sends it (a decimal string).
func ParseContactID(s string) (ContactID, error) {
	t := strings.TrimSpace(s)
	n, err := strconv.ParseUint(t, 10, 64)
	if err != nil || n == 0 || t[0] == '+' {
		return 0, fmt.Errorf("%w, got %q", ErrInvalidContactID, Truncate(s, 40))
	}
	return ContactID(n), nil
}

func (c ContactID) String() string { return strconv.FormatUint(uint64(c), 10) }

// Stream names the contact's event stream: contact-<id>.
func (c ContactID) Stream() string { return "contact-" + c.String() }

// ContactIDFromStream is the inverse of ContactID.Stream.
func ContactIDFromStream(stream string) (ContactID, bool) {
	rest, ok := strings.CutPrefix(stream, "contact-")
	if !ok {
		return 0, false
	}
	id, err := ParseContactID(rest)
	return id, err == nil
}

// WebhookStream names the stream of a webhook that names no valid contact.
func WebhookStream(webhookID string) string { return "webhook-" + webhookID }

// StreamPrefixes lists the name prefixes of every stream usersync writes
// (contact-, webhook-, email-, login-): an event store shared with other
// applications reads back only the streams that start with one of them.
func StreamPrefixes() []string { return []string{"contact-", "webhook-", "email-", "login-"} }

// EmailStream names the reservation stream that keeps an email address
// unique across users. The key is the address in lower case.
func EmailStream(email string) string { return "email-" + EmailKey(email) }

// LoginStream names the reservation stream that keeps a login unique.
func LoginStream(login string) string { return "login-" + strings.ToLower(strings.TrimSpace(login)) }

// NormalizeEmail trims an address as FunnelKit renders it (spaces, %40 for
// @) without changing its case. A literal + stays a + (it is common in
// addresses, ann+news@…): only %-escapes are decoded, as in a path, never
// the form encoding's + for a space.
func NormalizeEmail(s string) string {
	s = strings.TrimSpace(s)
	if strings.Contains(s, "%") {
		if u, err := url.PathUnescape(s); err == nil {
			s = strings.TrimSpace(u)
		}
	}
	return s
}

// EmailKey is the form under which two addresses count as the same user.
func EmailKey(email string) string { return strings.ToLower(NormalizeEmail(email)) }

// ValidEmail is a light check: one @ with something on both sides and a dot
// in the domain. FunnelKit validates addresses; this only catches garbage.
func ValidEmail(email string) bool {
	local, domain, ok := strings.Cut(email, "@")
	return ok && local != "" && strings.Contains(domain, ".") && !strings.ContainsAny(email, " \t\r\n<>,;") && !strings.Contains(domain, "@")
}

// Role is a WordPress-style role name.
type Role string

// Administrator is never granted by a webhook.
const Administrator Role = "administrator"

// Tag is a FunnelKit tag. Tags are identified by ID; names can change and
// need not be unique.
type Tag struct {
	ID   uint64 `json:"id"`
	Name string `json:"name"`
}

// SortTags orders tags by id and drops repeated ids (the first name wins).
func SortTags(tags []Tag) []Tag {
	out := slices.Clone(tags)
	slices.SortStableFunc(out, func(a, b Tag) int {
		switch {
		case a.ID < b.ID:
			return -1
		case a.ID > b.ID:
			return 1
		}
		return 0
	})
	return slices.CompactFunc(out, func(a, b Tag) bool { return a.ID == b.ID })
}
