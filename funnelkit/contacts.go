package funnelkit

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strings"

	"github.com/usersync/usersync/domain"
)

const noSuchContact = "no such contact"

// Contact reads contact id with its tags and custom fields
// (GET v3/contacts/{id}). A contact FunnelKit does not know is a *Error
// whose NotFound is true.
func (c *Client) Contact(ctx context.Context, id domain.ContactID) (domain.CRMContact, error) {
	k := call{method: http.MethodGet, endpoint: EndpointContact,
		path: []string{"contacts", id.String()}, notFound: noSuchContact}
	if id == 0 {
		return domain.CRMContact{}, c.fail(k.op(), KindClient, 0, "contact id 0: ids are positive", nil)
	}
	env, err := c.do(ctx, k)
	if err != nil {
		return domain.CRMContact{}, err
	}
	raw := env.result()
	if raw == nil {
		return domain.CRMContact{}, c.fail(k.op(), KindInvalidJSON, http.StatusOK, "the answer has no contact (no result)", nil)
	}
	contact, derr := decodeContact(raw)
	if derr != nil {
		return domain.CRMContact{}, c.fail(k.op(), KindInvalidJSON, http.StatusOK, "unexpected contact: "+derr.Error(), nil)
	}
	if contact.ID != id {
		return domain.CRMContact{}, c.fail(k.op(), KindWrongContact, http.StatusOK,
			fmt.Sprintf("the answer is contact #%d, not #%d", contact.ID, id), nil)
	}
	return contact, nil
}

// FindContact finds the contact with this email address
// (GET v3/contacts?search=…). FunnelKit's search matches parts of names and
// addresses, so only a result whose address equals email (ignoring case)
// counts; none gives false and no error.
func (c *Client) FindContact(ctx context.Context, email string) (domain.ContactID, bool, error) {
	k := call{method: http.MethodGet, endpoint: EndpointSearch, path: []string{"contacts"}}
	want := domain.EmailKey(email)
	if want == "" {
		return 0, false, c.fail(k.op(), KindClient, 0, "no email address to search for", nil)
	}
	k.query = url.Values{"search": {domain.NormalizeEmail(email)}}
	env, err := c.do(ctx, k)
	if err != nil {
		return 0, false, err
	}
	if _, ok := env.fields["result"]; !ok {
		return 0, false, c.fail(k.op(), KindInvalidJSON, http.StatusOK, "the answer has no search result (no result)", nil)
	}
	items, lerr := list(env.result())
	if lerr != nil {
		return 0, false, c.fail(k.op(), KindInvalidJSON, http.StatusOK, "unexpected search result: "+lerr.Error(), nil)
	}
	for i, item := range items {
		obj, oerr := object(item)
		if oerr != nil {
			return 0, false, c.fail(k.op(), KindInvalidJSON, http.StatusOK, fmt.Sprintf("search result #%d: %v", i+1, oerr), nil)
		}
		got, _ := scalar(obj["email"])
		if domain.EmailKey(got) != want {
			continue
		}
		id, ok := uintValue(obj["id"])
		if !ok || id == 0 {
			return 0, false, c.fail(k.op(), KindInvalidJSON, http.StatusOK, fmt.Sprintf("search result #%d has no valid id", i+1), nil)
		}
		return domain.ContactID(id), true, nil
	}
	return 0, false, nil
}

// SetFields writes custom fields of contact id, keyed by field id
// (POST v3/contacts/{id}/fields). Writing the same values again is
// harmless, so a failed call may be retried. No fields, no request.
func (c *Client) SetFields(ctx context.Context, id domain.ContactID, fields map[string]string) error {
	k := call{method: http.MethodPost, endpoint: EndpointSetFields,
		path: []string{"contacts", id.String(), "fields"}, notFound: noSuchContact}
	if id == 0 {
		return c.fail(k.op(), KindClient, 0, "contact id 0: ids are positive", nil)
	}
	if len(fields) == 0 {
		return nil
	}
	for key := range fields {
		if strings.TrimSpace(key) == "" {
			return c.fail(k.op(), KindClient, 0, "a field id is empty", nil)
		}
	}
	body, err := json.Marshal(struct {
		Fields map[string]string `json:"fields"`
	}{fields})
	if err != nil {
		return c.fail(k.op(), KindClient, 0, "cannot encode the fields", nil)
	}
	k.body = body
	_, err = c.do(ctx, k)
	return err
}
