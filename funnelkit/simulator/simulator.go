// Package simulator is an in-process stand-in for a WordPress site running
// FunnelKit Automations: it speaks the part of the REST API that usersync
// calls (see package funnelkit) over real HTTP, with Basic auth, WordPress
// error bodies and PHP's JSON quirks. End-to-end tests use it to set up
// contacts and tags, inject faults and read back what usersync wrote;
// `usersync serve --demo` uses it as the CRM.
package simulator

import (
	"context"
	"fmt"
	"maps"
	"net"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/usersync/usersync/domain"
	"github.com/usersync/usersync/funnelkit"
)

// Contact is a FunnelKit contact as the simulator keeps it.
type Contact struct {
	ID        domain.ContactID
	Email     string
	FirstName string // f_name
	LastName  string // l_name
	Phone     string // contact_no
	State     string
	Country   string
	// Fields holds custom field values keyed by field id ("7").
	Fields map[string]string
	// TagIDs are the contact's tags; ids not in the catalogue are not shown.
	TagIDs []uint64
}

func (c Contact) clone() Contact {
	c.Fields = maps.Clone(c.Fields)
	if c.Fields == nil {
		c.Fields = map[string]string{}
	}
	c.TagIDs = slices.Clone(c.TagIDs)
	return c
}

// FieldWrite is one accepted POST v3/contacts/{id}/fields call.
type FieldWrite struct {
	ContactID domain.ContactID
	Fields    map[string]string
	At        time.Time
}

type record struct {
	Contact
	created, modified time.Time
}

type fault struct {
	status int
	kind   funnelkit.Kind
	hang   bool
	// challenge200 answers 200 with a challenge page.
	challenge200 bool
}

// Simulator is the stand-in site. All its methods are safe for concurrent
// use, including while it serves requests.
type Simulator struct {
	user, password string

	mu       sync.Mutex
	contacts map[domain.ContactID]*record
	tags     map[uint64]string
	writes   []FieldWrite
	faults   map[string][]fault
	counts   map[string]int
	total    int
	// outage, when set, fails every request (StartOutage); outageCounts
	// counts them by contact.
	outage       *fault
	outageCounts map[domain.ContactID]int
}

// New makes an empty simulator that accepts Basic auth with user and
// password (an Application Password, compared exactly as given).
func New(user, password string) *Simulator {
	return &Simulator{
		user: user, password: password,
		contacts: map[domain.ContactID]*record{},
		tags:     map[uint64]string{},
		faults:   map[string][]fault{},
		counts:   map[string]int{},

		outageCounts: map[domain.ContactID]int{},
	}
}

// Handler serves the API under /wp-json/autonami-app/v3/.
func (s *Simulator) Handler() http.Handler { return http.HandlerFunc(s.serveHTTP) }

// Start serves the simulator on a fresh port of 127.0.0.1 and returns its
// base URL (the funnelkit.Config BaseURL) and a function that stops it. It
// panics if it cannot listen, as httptest does.
func (s *Simulator) Start() (baseURL string, close func()) {
	baseURL, close, err := s.Listen("127.0.0.1:0")
	if err != nil {
		panic(fmt.Sprintf("simulator: %v", err))
	}
	return baseURL, close
}

// Listen serves the simulator on addr ("127.0.0.1:8081") and returns its
// base URL and a function that stops it: it closes the listener and every
// connection and ends requests held by Hang.
func (s *Simulator) Listen(addr string) (baseURL string, close func(), err error) {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return "", nil, fmt.Errorf("listen on %s: %w", addr, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	srv := &http.Server{
		Handler:           s.Handler(),
		ReadHeaderTimeout: 10 * time.Second,
		BaseContext:       func(net.Listener) context.Context { return ctx },
	}
	go func() { _ = srv.Serve(l) }()
	var once sync.Once
	return "http://" + l.Addr().String(), func() {
		once.Do(func() {
			cancel()
			_ = srv.Close()
		})
	}, nil
}

// AddTag adds a tag to the catalogue, or renames it if it exists.
func (s *Simulator) AddTag(id uint64, name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.tags[id] = name
}

// RenameTag renames a tag; false if there is no such tag.
func (s *Simulator) RenameTag(id uint64, name string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.tags[id]; !ok {
		return false
	}
	s.tags[id] = name
	return true
}

// DeleteTag removes a tag from the catalogue and from every contact, as
// FunnelKit does; false if there is no such tag.
func (s *Simulator) DeleteTag(id uint64) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.tags[id]; !ok {
		return false
	}
	delete(s.tags, id)
	now := time.Now()
	for _, r := range s.contacts {
		if i := slices.Index(r.TagIDs, id); i >= 0 {
			r.TagIDs = slices.Delete(r.TagIDs, i, i+1)
			r.modified = now
		}
	}
	return true
}

// PutContact adds a contact, or replaces the one with the same id. Its id
// must be positive.
func (s *Simulator) PutContact(c Contact) {
	if c.ID == 0 {
		panic("simulator: PutContact with id 0")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	r := &record{Contact: c.clone(), created: now, modified: now}
	if old, ok := s.contacts[c.ID]; ok {
		r.created = old.created
	}
	s.contacts[c.ID] = r
}

// SetContactTags replaces a contact's tags; false if there is no such contact.
func (s *Simulator) SetContactTags(id domain.ContactID, tagIDs ...uint64) bool {
	return s.update(id, func(r *record) { r.TagIDs = slices.Clone(tagIDs) })
}

// SetField sets one custom field of a contact; false if there is no such contact.
func (s *Simulator) SetField(id domain.ContactID, field, value string) bool {
	return s.update(id, func(r *record) { r.Fields[field] = value })
}

// SetEmail changes a contact's email address; false if there is no such contact.
func (s *Simulator) SetEmail(id domain.ContactID, email string) bool {
	return s.update(id, func(r *record) { r.Email = email })
}

func (s *Simulator) update(id domain.ContactID, f func(*record)) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.contacts[id]
	if !ok {
		return false
	}
	f(r)
	r.modified = time.Now()
	return true
}

// DeleteContact removes a contact; false if there was none.
func (s *Simulator) DeleteContact(id domain.ContactID) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.contacts[id]
	delete(s.contacts, id)
	return ok
}

// Contact returns a copy of a contact, to check what usersync wrote.
func (s *Simulator) Contact(id domain.ContactID) (Contact, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.contacts[id]
	if !ok {
		return Contact{}, false
	}
	return r.Contact.clone(), true
}

// FieldWrites returns the accepted field writes, oldest first.
func (s *Simulator) FieldWrites() []FieldWrite {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]FieldWrite, len(s.writes))
	for i, w := range s.writes {
		w.Fields = maps.Clone(w.Fields)
		out[i] = w
	}
	return out
}

// Requests is the number of requests served, faults and refusals included.
func (s *Simulator) Requests() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.total
}

// RequestsTo is the number of requests to one endpoint, such as
// funnelkit.EndpointContact ("GET contacts/{id}").
func (s *Simulator) RequestsTo(endpoint string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.counts[endpoint]
}

// SampleData loads the demo's tags and contacts: tags 1 Customer, 2 VIP,
// 3 Trial; contact 1 ann@example.com (Customer, VIP), 2 bob@example.com
// (Trial, a textarea field), 3 without an email address.
func (s *Simulator) SampleData() {
	s.AddTag(1, "Customer")
	s.AddTag(2, "VIP")
	s.AddTag(3, "Trial")
	s.PutContact(Contact{ID: 1, Email: "ann@example.com", FirstName: "Ann", LastName: "Lee",
		Phone: "+15550100", State: "CA", Country: "US",
		Fields: map[string]string{"7": "gold", "9": "2026-01-02"}, TagIDs: []uint64{1, 2}})
	s.PutContact(Contact{ID: 2, Email: "bob@example.com", FirstName: "Bob", LastName: "Stone",
		Phone: "+15550101", State: "NY", Country: "US",
		Fields: map[string]string{"7": "silver", "8": "Line one<br />\nLine two"}, TagIDs: []uint64{3}})
	s.PutContact(Contact{ID: 3, FirstName: "Cleo", LastName: "Park", Country: "GB"})
}
