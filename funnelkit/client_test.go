package funnelkit_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/usersync/usersync/domain"
	"github.com/usersync/usersync/funnelkit"
	"github.com/usersync/usersync/funnelkit/simulator"
)

func TestContact_MapsColumnsCustomFieldsAndTags(t *testing.T) {
	sim, url := startSim(t)
	sim.SampleData()
	c := newClient(t, url)

	got, err := c.Contact(ctx(t), 1)
	if err != nil {
		t.Fatal(err)
	}
	if got.ID != 1 || got.Email != "ann@example.com" {
		t.Errorf("ID, Email = %v, %q", got.ID, got.Email)
	}
	want := map[string]string{
		"id": "1", "wpid": "0", "f_name": "Ann", "l_name": "Lee", "contact_no": "+15550100",
		"state": "CA", "country": "US", "timezone": "", "status": "1", "points": "0",
		"7": "gold", "9": "2026-01-02",
	}
	for k, v := range want {
		if got.Fields[k] != v {
			t.Errorf("Fields[%q] = %q, want %q", k, got.Fields[k], v)
		}
	}
	for _, k := range []string{"creation_date", "last_modified"} {
		if _, err := time.Parse("2006-01-02 15:04:05", got.Fields[k]); err != nil {
			t.Errorf("Fields[%q] = %q: %v", k, got.Fields[k], err)
		}
	}
	for _, k := range []string{"email", "tags", "fields", "lists"} {
		if _, ok := got.Fields[k]; ok {
			t.Errorf("Fields has %q; it is not a scalar column", k)
		}
	}
	if wantTags := []domain.Tag{{ID: 1, Name: "Customer"}, {ID: 2, Name: "VIP"}}; !reflect.DeepEqual(got.Tags, wantTags) {
		t.Errorf("Tags = %v, want %v", got.Tags, wantTags)
	}
}

func TestContact_Cases(t *testing.T) {
	sim, url := startSim(t)
	sim.SampleData()
	sim.PutContact(simulator.Contact{ID: 4, Email: "dan@example.com", TagIDs: []uint64{1, 2, 3}})
	sim.RenameTag(2, "Gold VIP")
	sim.DeleteTag(3)
	sim.SetEmail(2, "bob.new@example.com")
	c := newClient(t, url)

	tests := []struct {
		name  string
		id    domain.ContactID
		check func(t *testing.T, got domain.CRMContact)
	}{
		{"no email address", 3, func(t *testing.T, got domain.CRMContact) {
			if got.Email != "" || got.Fields["f_name"] != "Cleo" {
				t.Errorf("Email, f_name = %q, %q", got.Email, got.Fields["f_name"])
			}
			if len(got.Tags) != 0 || got.Tags == nil {
				t.Errorf("Tags = %#v, want empty, not nil", got.Tags)
			}
		}},
		{"textarea keeps FunnelKit's line breaks for the domain to clean", 2, func(t *testing.T, got domain.CRMContact) {
			if v := got.Fields["8"]; v != "Line one<br />\nLine two" {
				t.Errorf("Fields[8] = %q", v)
			}
			if v := domain.CleanFieldValue(got.Fields["8"]); v != "Line one\nLine two" {
				t.Errorf("cleaned = %q", v)
			}
		}},
		{"email changed since", 2, func(t *testing.T, got domain.CRMContact) {
			if got.Email != "bob.new@example.com" {
				t.Errorf("Email = %q", got.Email)
			}
		}},
		{"renamed tag and removed tag", 4, func(t *testing.T, got domain.CRMContact) {
			want := []domain.Tag{{ID: 1, Name: "Customer"}, {ID: 2, Name: "Gold VIP"}}
			if !reflect.DeepEqual(got.Tags, want) {
				t.Errorf("Tags = %v, want %v", got.Tags, want)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := c.Contact(ctx(t), tt.id)
			if err != nil {
				t.Fatal(err)
			}
			if got.ID != tt.id {
				t.Errorf("ID = %v, want %v", got.ID, tt.id)
			}
			tt.check(t, got)
		})
	}
}

func TestContact_Unknown_IsNotFound(t *testing.T) {
	sim, url := startSim(t)
	sim.SampleData()
	_, err := newClient(t, url).Contact(ctx(t), 99)

	var fe *funnelkit.Error
	if !errors.As(err, &fe) {
		t.Fatalf("err = %v, want *funnelkit.Error", err)
	}
	if fe.Kind != funnelkit.KindNotFound || fe.Status != 404 || !fe.NotFound() || fe.Temporary() || !isNotFound(err) {
		t.Errorf("Kind %v, Status %d, NotFound %v, Temporary %v", fe.Kind, fe.Status, fe.NotFound(), fe.Temporary())
	}
	if fe.Op != "GET v3/contacts/99" {
		t.Errorf("Op = %q", fe.Op)
	}
	for _, s := range []string{"no such contact", "No contact found with given id #99"} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error %q lacks %q", err, s)
		}
	}
}

func TestContact_IDZero_IsRefusedWithoutARequest(t *testing.T) {
	sim, url := startSim(t)
	_, err := newClient(t, url).Contact(ctx(t), 0)
	if err == nil || sim.Requests() != 0 {
		t.Fatalf("err = %v, requests = %d", err, sim.Requests())
	}
}

func TestFindContact(t *testing.T) {
	sim, url := startSim(t)
	sim.SampleData()
	sim.PutContact(simulator.Contact{ID: 5, Email: "anjo@example.com"})
	sim.PutContact(simulator.Contact{ID: 10, Email: "jo@example.com"})
	c := newClient(t, url)

	tests := []struct {
		email  string
		want   domain.ContactID
		wantOK bool
	}{
		{"ann@example.com", 1, true},
		{"ANN@Example.COM", 1, true},
		{" ann%40example.com ", 1, true},
		{"jo@example.com", 10, true}, // the search also finds anjo@ first
		{"nn@example.com", 0, false}, // only a part of ann@
		{"nobody@example.com", 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.email, func(t *testing.T) {
			got, ok, err := c.FindContact(ctx(t), tt.email)
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want || ok != tt.wantOK {
				t.Errorf("FindContact = %v, %v; want %v, %v", got, ok, tt.want, tt.wantOK)
			}
		})
	}
	t.Run("empty address is refused without a request", func(t *testing.T) {
		before := sim.RequestsTo(funnelkit.EndpointSearch)
		if _, _, err := c.FindContact(ctx(t), "  "); err == nil {
			t.Error("no error")
		}
		if sim.RequestsTo(funnelkit.EndpointSearch) != before {
			t.Error("a request was sent")
		}
	})
}

func TestTags_PagesUntilAShortPage(t *testing.T) {
	for _, n := range []int{0, 3, 100, 250} {
		t.Run(fmt.Sprint(n, " tags"), func(t *testing.T) {
			sim, url := startSim(t)
			for i := n; i >= 1; i-- {
				sim.AddTag(uint64(i), fmt.Sprint("tag ", i))
			}
			got, err := newClient(t, url).Tags(ctx(t))
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != n {
				t.Fatalf("%d tags, want %d", len(got), n)
			}
			for i, tag := range got {
				if tag.ID != uint64(i+1) || tag.Name != fmt.Sprint("tag ", i+1) {
					t.Fatalf("tag %d = %v", i, tag)
				}
			}
			if want := n/100 + 1; sim.RequestsTo(funnelkit.EndpointTags) != want {
				t.Errorf("%d requests, want %d", sim.RequestsTo(funnelkit.EndpointTags), want)
			}
		})
	}
}

// fullPages answers every tag page with 100 tags; same repeats the first
// page whatever the offset.
func fullPages(same bool, requests *int, mu *sync.Mutex) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		*requests++
		mu.Unlock()
		offset := 0
		if !same {
			fmt.Sscan(r.URL.Query().Get("offset"), &offset)
		}
		tags := make([]map[string]any, 100)
		for i := range tags {
			tags[i] = map[string]any{"ID": offset + i + 1, "name": "t"}
		}
		json.NewEncoder(w).Encode(map[string]any{"code": 200, "result": tags})
	}
}

func TestTags_ServerIgnoringOffset_IsAnError(t *testing.T) {
	var n int
	var mu sync.Mutex
	url := startHandler(t, fullPages(true, &n, &mu))
	_, err := newClient(t, url).Tags(ctx(t))
	var fe *funnelkit.Error
	if !errors.As(err, &fe) || fe.Kind != funnelkit.KindInvalidJSON || !strings.Contains(err.Error(), "ignores offset") {
		t.Fatalf("err = %v", err)
	}
	if n != 2 {
		t.Errorf("%d requests, want 2", n)
	}
}

func TestTags_EndlessPaging_IsBounded(t *testing.T) {
	var n int
	var mu sync.Mutex
	url := startHandler(t, fullPages(false, &n, &mu))
	defer funnelkit.SetMaxTagPages(20)()
	_, err := newClient(t, url).Tags(ctx(t))
	if err == nil || !strings.Contains(err.Error(), "more than 2000 tags") {
		t.Fatalf("err = %v", err)
	}
	if n != 20 {
		t.Errorf("%d requests, want 20", n)
	}
}

func TestSetFields(t *testing.T) {
	sim, url := startSim(t)
	sim.SampleData()
	c := newClient(t, url)

	if err := c.SetFields(ctx(t), 1, map[string]string{"12": "Tr0ub4dor & 3 <b>"}); err != nil {
		t.Fatal(err)
	}
	got, _ := sim.Contact(1)
	if got.Fields["12"] != "Tr0ub4dor & 3 <b>" || got.Fields["7"] != "gold" {
		t.Errorf("fields = %v", got.Fields)
	}
	writes := sim.FieldWrites()
	if len(writes) != 1 || writes[0].ContactID != 1 || !reflect.DeepEqual(writes[0].Fields, map[string]string{"12": "Tr0ub4dor & 3 <b>"}) {
		t.Errorf("writes = %+v", writes)
	}

	t.Run("unknown contact is not found and writes nothing", func(t *testing.T) {
		err := c.SetFields(ctx(t), 99, map[string]string{"12": "x"})
		if !isNotFound(err) {
			t.Errorf("err = %v", err)
		}
		if len(sim.FieldWrites()) != 1 {
			t.Error("a write was recorded")
		}
	})
	t.Run("no fields, no request", func(t *testing.T) {
		before := sim.RequestsTo(funnelkit.EndpointSetFields)
		if err := c.SetFields(ctx(t), 1, nil); err != nil {
			t.Fatal(err)
		}
		if sim.RequestsTo(funnelkit.EndpointSetFields) != before {
			t.Error("a request was sent")
		}
	})
	t.Run("empty field id is refused", func(t *testing.T) {
		if err := c.SetFields(ctx(t), 1, map[string]string{"": "x"}); err == nil {
			t.Error("no error")
		}
	})
}

// TestRequest_Shape checks what goes on the wire: path under a site in a
// folder, prefix, Basic auth with the password as given, headers, query and
// body.
func TestRequest_Shape(t *testing.T) {
	type seen struct {
		method, path, query, user, pass, accept, agent, ctype, body string
		auth                                                        bool
	}
	var mu sync.Mutex
	var got []seen
	url := startHandler(t, func(w http.ResponseWriter, r *http.Request) {
		u, p, ok := r.BasicAuth()
		b, _ := io.ReadAll(r.Body)
		mu.Lock()
		got = append(got, seen{r.Method, r.URL.Path, r.URL.RawQuery, u, p, r.Header.Get("Accept"),
			r.Header.Get("User-Agent"), r.Header.Get("Content-Type"), string(b), ok})
		mu.Unlock()
		switch {
		case strings.HasSuffix(r.URL.Path, "/contacts/12"):
			fmt.Fprint(w, `{"code":200,"message":"","result":{"id":"12","email":"a@example.com","tags":[],"fields":[]}}`)
		default:
			fmt.Fprint(w, `{"code":200,"message":"","result":[]}`)
		}
	})
	c := newClient(t, url+"/blog/", func(c *funnelkit.Config) { c.APIPrefix = "autonami-admin" })

	if _, err := c.Contact(ctx(t), 12); err != nil {
		t.Fatal(err)
	}
	if _, _, err := c.FindContact(ctx(t), "a+b@example.com"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Tags(ctx(t)); err != nil {
		t.Fatal(err)
	}
	if err := c.SetFields(ctx(t), 12, map[string]string{"7": "x y"}); err != nil {
		t.Fatal(err)
	}

	root := "/blog/wp-json/autonami-admin/v3/"
	want := []struct{ method, path, query, body string }{
		{"GET", root + "contacts/12", "", ""},
		{"GET", root + "contacts", "search=a%2Bb%40example.com", ""},
		{"GET", root + "tags", "limit=100&offset=0", ""},
		{"POST", root + "contacts/12/fields", "", `{"fields":{"7":"x y"}}`},
	}
	if len(got) != len(want) {
		t.Fatalf("%d requests, want %d", len(got), len(want))
	}
	for i, w := range want {
		g := got[i]
		if g.method != w.method || g.path != w.path || g.query != w.query || g.body != w.body {
			t.Errorf("request %d = %s %s?%s %s; want %s %s?%s %s", i, g.method, g.path, g.query, g.body, w.method, w.path, w.query, w.body)
		}
		if !g.auth || g.user != testUser || g.pass != testPassword {
			t.Errorf("request %d: basic auth %v %q %q", i, g.auth, g.user, g.pass)
		}
		if g.accept != "application/json" || g.agent != "usersync" {
			t.Errorf("request %d: Accept %q, User-Agent %q", i, g.accept, g.agent)
		}
		if w.method == "POST" && g.ctype != "application/json" {
			t.Errorf("request %d: Content-Type %q", i, g.ctype)
		}
	}
}

func TestObserve_SeesEveryRequestWithABoundedLabel(t *testing.T) {
	sim, url := startSim(t)
	sim.SampleData()
	type obs struct {
		endpoint string
		status   int
		kind     funnelkit.Kind
	}
	var mu sync.Mutex
	var got []obs
	c := newClient(t, url, func(c *funnelkit.Config) {
		c.Observe = func(endpoint string, status int, kind funnelkit.Kind, d time.Duration) {
			if d <= 0 {
				t.Errorf("duration %v", d)
			}
			mu.Lock()
			got = append(got, obs{endpoint, status, kind})
			mu.Unlock()
		}
	})
	sim.FailNext(funnelkit.EndpointTags, 1, 503)
	c.Contact(ctx(t), 1)
	c.Contact(ctx(t), 99)
	c.FindContact(ctx(t), "ann@example.com")
	c.Tags(ctx(t))
	c.Tags(ctx(t))
	c.SetFields(ctx(t), 1, map[string]string{"7": "x"})

	want := []obs{
		{"GET contacts/{id}", 200, funnelkit.KindOK},
		{"GET contacts/{id}", 404, funnelkit.KindNotFound},
		{"GET contacts", 200, funnelkit.KindOK},
		{"GET tags", 503, funnelkit.KindServer},
		{"GET tags", 200, funnelkit.KindOK},
		{"POST contacts/{id}/fields", 200, funnelkit.KindOK},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("observed %v\nwant %v", got, want)
	}
	if funnelkit.KindNotFound.String() != "not_found" || funnelkit.KindOK.String() != "ok" {
		t.Error("kind names changed: they are metric label values")
	}
}

func TestClient_ConcurrentUse(t *testing.T) {
	sim, url := startSim(t)
	sim.SampleData()
	c := newClient(t, url)
	var wg sync.WaitGroup
	for i := range 16 {
		wg.Go(func() {
			id := domain.ContactID(i%3 + 1)
			if _, err := c.Contact(ctx(t), id); err != nil {
				t.Error(err)
			}
			if err := c.SetFields(ctx(t), id, map[string]string{"20": fmt.Sprint(i)}); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if n := len(sim.FieldWrites()); n != 16 {
		t.Errorf("%d writes", n)
	}
}

func isNotFound(err error) bool {
	var e *funnelkit.Error
	return errors.As(err, &e) && e.NotFound()
}
