package domain

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
)

// Meta keys with a special meaning in the field map.
const (
	// MetaLogin maps a CRM field to the login of a new user.
	MetaLogin = "user_login"
	// MetaPassword maps a CRM field to the password of a new user instead
	// of a generated one. It is never stored as meta.
	MetaPassword = "user_pass"
)

// DefaultFieldMap is WP Fusion's default mapping: user meta key ← FunnelKit
// contact column. Custom fields map by their numeric id.
func DefaultFieldMap() map[string]string {
	return map[string]string{
		"first_name":      "f_name",
		"last_name":       "l_name",
		MetaEmail:         "email",
		"billing_phone":   "contact_no",
		"billing_state":   "state",
		"billing_country": "country",
	}
}

// Policy is the site owner's configuration of what webhooks may do.
type Policy struct {
	// DefaultRole is given to new users when the webhook asks for no role
	// (or one it may not grant).
	DefaultRole Role
	// AllowedRoles are the roles a webhook may grant. Administrator is
	// refused even if listed.
	AllowedRoles []Role
	// FieldMap maps user meta keys to CRM fields.
	FieldMap map[string]string
	// PasswordField is the CRM field that receives a generated password;
	// empty turns password return off.
	PasswordField string
}

// Validate checks a policy once, at start-up.
func (p Policy) Validate() error {
	if p.DefaultRole == "" {
		return errors.New("default role is empty: set --default-role (for example subscriber)")
	}
	if p.DefaultRole == Administrator {
		return errors.New("default role administrator is refused: a webhook never grants administrator")
	}
	for k, v := range p.FieldMap {
		if k == "" || v == "" {
			return fmt.Errorf("field map entry %q=%q: both the meta key and the CRM field are needed", k, v)
		}
		if p.PasswordField != "" && v == p.PasswordField && k != MetaPassword {
			return fmt.Errorf("field map entry %s=%s reads the password field: the returned password would be copied into user meta; map another field", k, v)
		}
	}
	return nil
}

// ErrRoleRefused is matched by the error RoleFor gives for a role a webhook
// may not grant.
var ErrRoleRefused = errors.New("role refused")

// RoleFor checks a role a webhook asks for. Administrator is never granted,
// whatever the allowed list says.
func (p Policy) RoleFor(requested string) (Role, error) {
	r := Role(strings.ToLower(strings.TrimSpace(requested)))
	if r == Administrator {
		return "", fmt.Errorf("%w: administrator is never granted by a webhook", ErrRoleRefused)
	}
	if !slices.Contains(p.AllowedRoles, r) {
		return "", fmt.Errorf("%w: %q is not in the allowed roles (--roles)", ErrRoleRefused, Truncate(requested, 40))
	}
	return r, nil
}

// CRMContact is a contact as read from the CRM, reduced to domain values:
// Fields holds its columns (f_name, contact_no, …) and custom fields by id.
type CRMContact struct {
	ID     ContactID
	Email  string
	Fields map[string]string
	Tags   []Tag
}

// field reads a CRM field; "email" is the contact's address.
func (c CRMContact) field(name string) string {
	if name == "email" {
		return c.Email
	}
	return CleanFieldValue(c.Fields[name])
}

// CleanFieldValue turns the HTML line breaks FunnelKit puts in textarea
// values into newlines and trims the value.
func CleanFieldValue(v string) string {
	for _, br := range []string{"<br />\r\n", "<br />\n", "<br/>\n", "<br>\n", "<br />", "<br/>", "<br>"} {
		v = strings.ReplaceAll(v, br, "\n")
	}
	return strings.TrimSpace(v)
}

// MetaFrom maps the contact's fields onto user meta. The email, login and
// password keys are not meta and are left out.
func (p Policy) MetaFrom(c CRMContact) map[string]string {
	out := make(map[string]string, len(p.FieldMap))
	for key, field := range p.FieldMap {
		switch key {
		case MetaEmail, MetaLogin, MetaPassword:
			continue
		}
		if p.PasswordField != "" && field == p.PasswordField {
			continue // never copy a returned password into meta
		}
		if v := c.field(field); v != "" {
			out[key] = v
		}
	}
	return out
}

// LoginFor is the login of a new user: the mapped login field if there is
// one and it is set, else the email address.
func (p Policy) LoginFor(c CRMContact) string {
	if f, ok := p.FieldMap[MetaLogin]; ok {
		if v := c.field(f); v != "" {
			return v
		}
	}
	return NormalizeEmail(c.Email)
}

// PasswordFrom is the password the contact's mapped password field gives, if any.
func (p Policy) PasswordFrom(c CRMContact) (string, bool) {
	f, ok := p.FieldMap[MetaPassword]
	if !ok {
		return "", false
	}
	v := strings.TrimSpace(c.Fields[f])
	return v, v != ""
}

// AddPlan is what an add webhook does for a contact.
type AddPlan int

const (
	// AddAsUpdate: the contact already has a user; behave as update (no
	// password, no email).
	AddAsUpdate AddPlan = iota + 1
	// AddLink: another contact's user has this email; move that user to
	// this contact instead of creating a duplicate.
	AddLink
	// AddCreate: create a new user.
	AddCreate
)

// ErrNoEmail is the add failure for a contact without an email address.
var ErrNoEmail = errors.New("No email provided for imported user")

// ErrInvalidEmail is the add failure for a contact whose email is not an address.
var ErrInvalidEmail = errors.New("contact email is not a valid address")

// PlanAdd decides what an add webhook does. owner is the user that holds the
// contact's email address, nil if the address is free.
func PlanAdd(s *ContactState, c CRMContact, owner *User) (AddPlan, error) {
	if s.User != nil {
		return AddAsUpdate, nil
	}
	email := NormalizeEmail(c.Email)
	if email == "" {
		return 0, ErrNoEmail
	}
	if !ValidEmail(email) {
		return 0, fmt.Errorf("%w: %q", ErrInvalidEmail, Truncate(email, 80))
	}
	if owner != nil && (owner.ContactID != s.ContactID || s.Relinks(owner)) {
		return AddLink, nil
	}
	return AddCreate, nil
}

// NewUser is what creating a user needs beyond the contact: values the
// caller made with I/O (ids, randomness, sealing).
type NewUser struct {
	UserID       string
	Login        string
	PasswordHash string
	// Role is the role the webhook asked for ("" for none).
	RequestedRole string
	WelcomeEmail  bool
	// Issued is the sealed generated password to return to the CRM, nil
	// when password return is off or the password came from a CRM field.
	Issued *PasswordIssued
}

// DecideCreate is the events of a new user for contact c, then its tags and
// meta. A role the webhook may not grant falls back to the default role; the
// returned note says so.
func DecideCreate(p Policy, c CRMContact, n NewUser) (events []Event, note string) {
	role := p.DefaultRole
	if n.RequestedRole != "" {
		r, err := p.RoleFor(n.RequestedRole)
		if err != nil {
			note = err.Error() + "; gave " + string(p.DefaultRole)
		} else {
			role = r
		}
	}
	events = append(events, UserCreated{
		UserID: n.UserID, ContactID: c.ID, Login: n.Login, Email: NormalizeEmail(c.Email),
		Role: role, PasswordHash: n.PasswordHash, WelcomeEmail: n.WelcomeEmail,
	})
	empty := &User{Meta: map[string]string{}}
	events = append(events, DecideTags(empty, c.Tags)...)
	events = append(events, DecideMeta(empty, p.MetaFrom(c))...)
	if n.Issued != nil {
		events = append(events, *n.Issued)
	}
	return events, note
}

// DecideLink moves owner (another contact's user with the same email) to
// contact c. It returns the event for c's stream and the one for the
// owner's old stream; the caller then applies update decisions.
func DecideLink(owner *User, c CRMContact) (linked UserLinked, unlinked UserUnlinked) {
	linked = UserLinked{
		UserID: owner.UserID, ContactID: c.ID, FromContactID: owner.ContactID,
		Login: owner.Login, Email: owner.Email, Role: owner.Role, PasswordHash: owner.PasswordHash,
		Meta: maps.Clone(owner.Meta), Tags: slices.Clone(owner.Tags), CreatedAt: owner.CreatedAt,
	}
	return linked, UserUnlinked{UserID: owner.UserID, ToContactID: c.ID}
}

// DecideTags replaces the user's tag set with tags (never merges) and says
// what was added and removed. Same set, no event.
func DecideTags(u *User, tags []Tag) []Event {
	next := SortTags(tags)
	prev := SortTags(u.Tags)
	var added, removed []Tag
	for _, t := range next {
		if !slices.ContainsFunc(prev, func(o Tag) bool { return o.ID == t.ID }) {
			added = append(added, t)
		}
	}
	for _, t := range prev {
		if !slices.ContainsFunc(next, func(o Tag) bool { return o.ID == t.ID }) {
			removed = append(removed, t)
		}
	}
	if len(added) == 0 && len(removed) == 0 && slices.Equal(next, prev) {
		return nil
	}
	if next == nil {
		next = []Tag{}
	}
	return []Event{TagsUpdated{Tags: next, Added: added, Removed: removed}}
}

// DecideMeta records the mapped fields whose value differs from the user's
// meta. Keys not in values are left alone; a value set to "" clears the key.
func DecideMeta(u *User, values map[string]string) []Event {
	var changes []MetaChange
	for _, k := range slices.Sorted(maps.Keys(values)) {
		if old := u.Meta[k]; old != values[k] {
			changes = append(changes, MetaChange{Key: k, Old: old, New: values[k]})
		}
	}
	if len(changes) == 0 {
		return nil
	}
	return []Event{MetaPulled{Changes: changes}}
}

// UpdateMeta is DecideMeta for an update webhook: every mapped key is
// compared, so a field emptied in the CRM clears the meta key.
func (p Policy) UpdateMeta(u *User, c CRMContact) []Event {
	values := p.MetaFrom(c)
	for key, field := range p.FieldMap {
		switch key {
		case MetaEmail, MetaLogin, MetaPassword:
			continue
		}
		if p.PasswordField != "" && field == p.PasswordField {
			continue
		}
		if _, ok := values[key]; !ok && u.Meta[key] != "" {
			values[key] = ""
		}
	}
	return DecideMeta(u, values)
}

// DecideEmail records a changed email address as a user_email meta change.
// free says whether the new address may be taken (its reservation is free
// or already this contact's); when it is not, nothing changes and the note
// says why.
func DecideEmail(u *User, email string, free bool) (events []Event, note string) {
	email = NormalizeEmail(email)
	if email == "" || EmailKey(email) == EmailKey(u.Email) {
		if email != "" && email != u.Email {
			return []Event{MetaPulled{Changes: []MetaChange{{Key: MetaEmail, Old: u.Email, New: email}}}}, ""
		}
		return nil, ""
	}
	if !ValidEmail(email) {
		return nil, fmt.Sprintf("email not changed: %q is not a valid address", Truncate(email, 80))
	}
	if !free {
		return nil, fmt.Sprintf("email not changed: %s belongs to another user", email)
	}
	return []Event{MetaPulled{Changes: []MetaChange{{Key: MetaEmail, Old: u.Email, New: email}}}}, ""
}

// DecideRole applies a role an update webhook asks for. Empty asks for
// nothing; a role the policy refuses (administrator always) changes nothing
// and the note says why.
func DecideRole(p Policy, u *User, requested string) (events []Event, note string) {
	if strings.TrimSpace(requested) == "" {
		return nil, ""
	}
	r, err := p.RoleFor(requested)
	if err != nil {
		return nil, err.Error()
	}
	if r == u.Role {
		return nil, ""
	}
	return []Event{RoleChanged{Old: u.Role, New: r}}, ""
}

// ResolveTags turns the entries of a tags param (ids, or names that match a
// catalogue tag exactly) into tags. An entry that matches nothing is an
// ErrInvalidRequest failure naming it.
func ResolveTags(entries []string, catalog []Tag) ([]Tag, error) {
	var out []Tag
	for _, e := range entries {
		if n, err := strconv.ParseUint(e, 10, 64); err == nil {
			i := slices.IndexFunc(catalog, func(t Tag) bool { return t.ID == n })
			if i < 0 {
				return nil, Fail(ErrInvalidRequest, fmt.Sprintf("tags: no FunnelKit tag has id %d", n))
			}
			out = append(out, catalog[i])
			continue
		}
		i := slices.IndexFunc(catalog, func(t Tag) bool { return t.Name == e })
		if i < 0 {
			return nil, Fail(ErrInvalidRequest, fmt.Sprintf("tags: no FunnelKit tag is named %q (use tag ids or exact names)", Truncate(e, 60)))
		}
		out = append(out, catalog[i])
	}
	return out, nil
}
