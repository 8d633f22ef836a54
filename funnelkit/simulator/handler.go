package simulator

import (
	"crypto/subtle"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/usersync/usersync/domain"
	"github.com/usersync/usersync/funnelkit"
)

const apiRoot = "/wp-json/" + funnelkit.DefaultAPIPrefix + "/v3/"

// timeLayout is how FunnelKit renders dates (MySQL DATETIME, UTC).
const timeLayout = "2006-01-02 15:04:05"

// route is a matched request: its endpoint label and contact id.
type route struct {
	endpoint string
	id       domain.ContactID
}

// match maps a request to an endpoint as FunnelKit's routes do: a contact
// id must be digits; anything else is no route.
func match(r *http.Request) (route, bool) {
	rest, ok := strings.CutPrefix(r.URL.Path, apiRoot)
	if !ok {
		return route{}, false
	}
	parts := strings.Split(strings.TrimSuffix(rest, "/"), "/")
	isID := func(s string) (domain.ContactID, bool) {
		if s == "" || strings.Trim(s, "0123456789") != "" {
			return 0, false
		}
		n, err := strconv.ParseUint(s, 10, 64)
		return domain.ContactID(n), err == nil
	}
	switch {
	case r.Method == http.MethodGet && len(parts) == 1 && parts[0] == "contacts":
		return route{endpoint: funnelkit.EndpointSearch}, true
	case r.Method == http.MethodGet && len(parts) == 1 && parts[0] == "tags":
		return route{endpoint: funnelkit.EndpointTags}, true
	case r.Method == http.MethodGet && len(parts) == 2 && parts[0] == "contacts":
		if id, ok := isID(parts[1]); ok {
			return route{endpoint: funnelkit.EndpointContact, id: id}, true
		}
	case r.Method == http.MethodPost && len(parts) == 3 && parts[0] == "contacts" && parts[2] == "fields":
		if id, ok := isID(parts[1]); ok {
			return route{endpoint: funnelkit.EndpointSetFields, id: id}, true
		}
	}
	return route{}, false
}

func (s *Simulator) serveHTTP(w http.ResponseWriter, r *http.Request) {
	rt, ok := match(r)

	s.mu.Lock()
	s.total++
	var f *fault
	if ok {
		s.counts[rt.endpoint]++
		if q := s.faults[rt.endpoint]; len(q) > 0 {
			f = &q[0]
			s.faults[rt.endpoint] = q[1:]
		} else if s.outage != nil {
			f = s.outage
			s.outageCounts[rt.id]++
		}
	}
	s.mu.Unlock()

	if f != nil {
		s.serveFault(w, r, *f)
		return
	}
	if !strings.HasPrefix(r.URL.Path, "/wp-json/") {
		// WordPress renders its theme's 404 page.
		w.Header().Set("Content-Type", "text/html; charset=UTF-8")
		w.WriteHeader(http.StatusNotFound)
		fmt.Fprint(w, "<!DOCTYPE html>\n<html><head><title>Page not found – Demo Shop</title></head><body><h1>Oops! That page can’t be found.</h1></body></html>\n")
		return
	}
	if !ok {
		wpError(w, http.StatusNotFound, "rest_no_route", "No route was found matching the URL and request method.")
		return
	}
	if code, msg, ok := s.authenticate(r); !ok {
		wpError(w, http.StatusUnauthorized, code, msg)
		return
	}
	switch rt.endpoint {
	case funnelkit.EndpointContact:
		s.getContact(w, rt.id)
	case funnelkit.EndpointSearch:
		s.searchContacts(w, r)
	case funnelkit.EndpointTags:
		s.listTags(w, r)
	case funnelkit.EndpointSetFields:
		s.setFields(w, r, rt.id)
	}
}

// authenticate checks Basic auth as WordPress does for Application
// Passwords, comparing in constant time.
func (s *Simulator) authenticate(r *http.Request) (code, msg string, ok bool) {
	user, pass, has := r.BasicAuth()
	if !has {
		return "rest_forbidden", "Sorry, you are not allowed to do that.", false
	}
	userOK := subtle.ConstantTimeCompare([]byte(user), []byte(s.user)) == 1
	passOK := subtle.ConstantTimeCompare([]byte(pass), []byte(s.password)) == 1
	switch {
	case !userOK:
		return "invalid_username", "Unknown username. Check again or try your email address.", false
	case !passOK:
		return "incorrect_password", "The provided password is an invalid application password.", false
	}
	return "", "", true
}

func (s *Simulator) serveFault(w http.ResponseWriter, r *http.Request, f fault) {
	if f.hang {
		// net/http notices a closed connection only once the body is read.
		_, _ = io.Copy(io.Discard, io.LimitReader(r.Body, 1<<20))
		<-r.Context().Done()
		panic(http.ErrAbortHandler)
	}
	if f.status != 0 {
		wpError(w, f.status, strconv.Itoa(f.status), http.StatusText(f.status))
		return
	}
	if f.challenge200 {
		w.Header().Set("Content-Type", "text/html; charset=UTF-8")
		w.WriteHeader(http.StatusOK)
		fmt.Fprint(w, challengePage)
		return
	}
	switch f.kind {
	case funnelkit.KindEmptyBody:
		w.Header().Set("Content-Type", "application/json; charset=UTF-8")
		w.WriteHeader(http.StatusOK)
	case funnelkit.KindHTML:
		w.Header().Set("Content-Type", "text/html; charset=UTF-8")
		w.WriteHeader(http.StatusForbidden)
		fmt.Fprint(w, challengePage)
	case funnelkit.KindInvalidJSON:
		w.Header().Set("Content-Type", "application/json; charset=UTF-8")
		w.WriteHeader(http.StatusOK)
		fmt.Fprint(w, `{"code":200,"message":"Success","result":{"id":`)
	case funnelkit.KindUnreachable:
		panic(http.ErrAbortHandler)
	case funnelkit.KindAuth:
		wpError(w, http.StatusUnauthorized, "incorrect_password", "The provided password is an invalid application password.")
	case funnelkit.KindNotFound:
		wpError(w, http.StatusNotFound, "404", "No contact found with given id")
	case funnelkit.KindServer:
		wpError(w, http.StatusInternalServerError, "internal_server_error", "There has been a critical error on this website.")
	case funnelkit.KindClient:
		wpError(w, http.StatusBadRequest, "rest_invalid_param", "Invalid parameter(s)")
	}
}

// challengePage is what a CDN answers instead of the site while it
// challenges the client.
const challengePage = "<!DOCTYPE html><html lang=\"en-US\"><head><title>Just a moment...</title></head>" +
	"<body><noscript>Enable JavaScript and cookies to continue</noscript></body></html>"

// wpError writes a WordPress REST error. A numeric code is written as a
// number, as FunnelKit does ({"code":404,…}).
func wpError(w http.ResponseWriter, status int, code, msg string) {
	var c any = code
	if n, err := strconv.Atoi(code); err == nil {
		c = n
	}
	writeJSON(w, status, map[string]any{"code": c, "message": msg, "data": map[string]int{"status": status}})
}

func success(w http.ResponseWriter, msg string, result any, extra map[string]any) {
	body := map[string]any{"code": 200, "message": msg, "result": result}
	for k, v := range extra {
		body[k] = v
	}
	writeJSON(w, http.StatusOK, body)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	data, err := json.Marshal(v)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json; charset=UTF-8")
	w.WriteHeader(status)
	_, _ = w.Write(data)
}

type tagJSON struct {
	ID        any    `json:"ID"`
	Name      string `json:"name"`
	Type      int    `json:"type"`
	CreatedAt string `json:"created_at"`
}

type contactJSON struct {
	ID           uint64    `json:"id"`
	WPID         int       `json:"wpid"`
	UID          string    `json:"uid"`
	Email        string    `json:"email"`
	FName        string    `json:"f_name"`
	LName        string    `json:"l_name"`
	ContactNo    string    `json:"contact_no"`
	State        string    `json:"state"`
	Country      string    `json:"country"`
	Timezone     string    `json:"timezone"`
	Source       string    `json:"source"`
	Points       int       `json:"points"`
	Status       int       `json:"status"`
	CreationDate string    `json:"creation_date"`
	LastModified string    `json:"last_modified"`
	Fields       any       `json:"fields"`
	Tags         []tagJSON `json:"tags"`
	Lists        []any     `json:"lists"`
}

// render is a contact as FunnelKit answers it; call with s.mu held. An
// empty fields map is [] as PHP encodes an empty array.
func (s *Simulator) render(r *record) contactJSON {
	c := contactJSON{
		ID: uint64(r.ID), UID: fmt.Sprintf("%032x", uint64(r.ID)*0x9e3779b97f4a7c15), Email: r.Email,
		FName: r.FirstName, LName: r.LastName, ContactNo: r.Phone, State: r.State, Country: r.Country,
		Source: "usersync-simulator", Status: 1,
		CreationDate: r.created.UTC().Format(timeLayout), LastModified: r.modified.UTC().Format(timeLayout),
		Fields: []any{}, Tags: []tagJSON{}, Lists: []any{},
	}
	if len(r.Fields) > 0 {
		c.Fields = maps.Clone(r.Fields)
	}
	for _, id := range r.TagIDs {
		if name, ok := s.tags[id]; ok {
			c.Tags = append(c.Tags, tagJSON{ID: id, Name: name, Type: 1, CreatedAt: c.CreationDate})
		}
	}
	return c
}

func (s *Simulator) getContact(w http.ResponseWriter, id domain.ContactID) {
	s.mu.Lock()
	r, found := s.contacts[id]
	var c contactJSON
	if found {
		c = s.render(r)
	}
	s.mu.Unlock()
	if !found {
		wpError(w, http.StatusNotFound, "404", fmt.Sprintf("No contact found with given id #%d", id))
		return
	}
	success(w, "", c, nil)
}

// paging reads limit and offset as FunnelKit does (limit defaults to 10).
func paging(r *http.Request) (limit, offset int, valid bool) {
	limit, offset = 10, 0
	q := r.URL.Query()
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			return 0, 0, false
		}
		limit = n
	}
	if v := q.Get("offset"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			return 0, 0, false
		}
		offset = n
	}
	return limit, offset, true
}

func page[T any](items []T, limit, offset int) []T {
	if offset >= len(items) {
		return []T{}
	}
	return items[offset:min(len(items), offset+limit)]
}

// searchContacts lists contacts whose email or name contains search,
// ignoring case, by id.
func (s *Simulator) searchContacts(w http.ResponseWriter, r *http.Request) {
	limit, offset, valid := paging(r)
	if !valid {
		wpError(w, http.StatusBadRequest, "rest_invalid_param", "Invalid parameter(s): limit, offset")
		return
	}
	term := strings.ToLower(strings.TrimSpace(r.URL.Query().Get("search")))
	s.mu.Lock()
	var hits []contactJSON
	for _, id := range slices.Sorted(maps.Keys(s.contacts)) {
		c := s.contacts[id]
		if term == "" || strings.Contains(strings.ToLower(c.Email), term) ||
			strings.Contains(strings.ToLower(c.FirstName+" "+c.LastName), term) {
			hits = append(hits, s.render(c))
		}
	}
	s.mu.Unlock()
	success(w, "", page(hits, limit, offset), map[string]any{"total_count": len(hits), "limit": limit, "offset": offset})
}

// listTags lists the catalogue by id. IDs come as strings, as WordPress
// returns database rows; the contact's tags carry numbers.
func (s *Simulator) listTags(w http.ResponseWriter, r *http.Request) {
	limit, offset, valid := paging(r)
	if !valid {
		wpError(w, http.StatusBadRequest, "rest_invalid_param", "Invalid parameter(s): limit, offset")
		return
	}
	s.mu.Lock()
	all := make([]tagJSON, 0, len(s.tags))
	for _, id := range slices.Sorted(maps.Keys(s.tags)) {
		all = append(all, tagJSON{ID: strconv.FormatUint(id, 10), Name: s.tags[id], Type: 1, CreatedAt: "2026-01-01 00:00:00"})
	}
	s.mu.Unlock()
	success(w, "", page(all, limit, offset), map[string]any{"total_count": len(all), "limit": limit, "offset": offset})
}

// setFields writes custom fields: body {"fields":{"<field id>":"<value>"}}.
func (s *Simulator) setFields(w http.ResponseWriter, r *http.Request, id domain.ContactID) {
	var body struct {
		Fields map[string]string `json:"fields"`
	}
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<20))
	if err := dec.Decode(&body); err != nil || len(body.Fields) == 0 {
		wpError(w, http.StatusBadRequest, "rest_invalid_param", `Invalid parameter(s): fields (want {"fields":{"<field id>":"<value>"}})`)
		return
	}
	for k := range body.Fields {
		if strings.TrimSpace(k) == "" {
			wpError(w, http.StatusBadRequest, "rest_invalid_param", "Invalid parameter(s): fields (empty field id)")
			return
		}
	}
	s.mu.Lock()
	rec, found := s.contacts[id]
	var c contactJSON
	if found {
		now := time.Now()
		for k, v := range body.Fields {
			rec.Fields[k] = v
		}
		rec.modified = now
		s.writes = append(s.writes, FieldWrite{ContactID: id, Fields: body.Fields, At: now})
		c = s.render(rec)
	}
	s.mu.Unlock()
	if !found {
		wpError(w, http.StatusNotFound, "404", fmt.Sprintf("No contact found with given id #%d", id))
		return
	}
	success(w, "Contact fields updated", c, nil)
}
