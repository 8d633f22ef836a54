package simulator_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/usersync/usersync/domain"
	"github.com/usersync/usersync/funnelkit"
	"github.com/usersync/usersync/funnelkit/simulator"
)

const (
	user     = "demo"
	password = "abcd EFGH 1234 ijkl MNOP 5678"
	api      = "/wp-json/autonami-app/v3/"
)

func start(t *testing.T) (*simulator.Simulator, string) {
	t.Helper()
	sim := simulator.New(user, password)
	sim.SampleData()
	url, stop := sim.Start()
	t.Cleanup(stop)
	return sim, url
}

type answer struct {
	status int
	ctype  string
	body   string
	json   map[string]any
}

// get sends a request with the simulator's credentials unless auth is false.
func send(t *testing.T, method, url, body string, auth bool) answer {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if auth {
		req.SetBasicAuth(user, password)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	a := answer{status: resp.StatusCode, ctype: resp.Header.Get("Content-Type"), body: string(b)}
	json.Unmarshal(b, &a.json)
	return a
}

func TestSimulator_AnswersAsWordPressDoes(t *testing.T) {
	_, url := start(t)
	tests := []struct {
		name, method, path, body string
		auth                     bool
		status                   int
		code                     any // the "code" member, nil to skip
		has                      string
	}{
		{"contact", "GET", api + "contacts/1", "", true, 200, 200.0, `"email":"ann@example.com"`},
		{"contact without custom fields has fields []", "GET", api + "contacts/3", "", true, 200, 200.0, `"fields":[]`},
		{"contact tags carry numeric ids", "GET", api + "contacts/1", "", true, 200, 200.0, `{"ID":1,"name":"Customer"`},
		{"unknown contact", "GET", api + "contacts/5", "", true, 404, 404.0, "No contact found with given id #5"},
		{"no credentials", "GET", api + "contacts/1", "", false, 401, "rest_forbidden", ""},
		{"non-numeric id is no route", "GET", api + "contacts/abc", "", true, 404, "rest_no_route", ""},
		{"wrong method is no route", "DELETE", api + "contacts/1", "", true, 404, "rest_no_route", ""},
		{"other prefix is no route", "GET", "/wp-json/autonami-admin/v3/contacts/1", "", true, 404, "rest_no_route", ""},
		{"outside the API is the theme's 404 page", "GET", "/shop/", "", true, 404, nil, "<title>Page not found"},
		{"tag catalogue ids are strings", "GET", api + "tags", "", true, 200, 200.0, `"ID":"1"`},
		{"bad paging", "GET", api + "tags?limit=x", "", true, 400, "rest_invalid_param", ""},
		{"search", "GET", api + "contacts?search=BOB", "", true, 200, 200.0, `"total_count":1`},
		{"fields body must be an object of strings", "POST", api + "contacts/1/fields", `{"fields":{"7":3}}`, true, 400, "rest_invalid_param", ""},
		{"fields body must not be empty", "POST", api + "contacts/1/fields", `{"fields":{}}`, true, 400, "rest_invalid_param", ""},
		{"fields of an unknown contact", "POST", api + "contacts/9/fields", `{"fields":{"7":"x"}}`, true, 404, 404.0, "#9"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := send(t, tt.method, url+tt.path, tt.body, tt.auth)
			if a.status != tt.status {
				t.Errorf("status %d, want %d: %s", a.status, tt.status, a.body)
			}
			if tt.code != nil && a.json["code"] != tt.code {
				t.Errorf("code %#v, want %#v: %s", a.json["code"], tt.code, a.body)
			}
			if tt.code != nil && tt.status >= 400 {
				data, _ := a.json["data"].(map[string]any)
				if data["status"] != float64(tt.status) {
					t.Errorf("data.status %v: %s", data["status"], a.body)
				}
			}
			if !strings.Contains(a.body, tt.has) {
				t.Errorf("body lacks %q: %s", tt.has, a.body)
			}
		})
	}
}

func TestSimulator_WrongUserOrPassword(t *testing.T) {
	_, url := start(t)
	for _, tc := range []struct{ user, pass, code string }{
		{"nobody", password, "invalid_username"},
		{user, strings.ReplaceAll(password, " ", ""), "incorrect_password"},
		{user, "", "incorrect_password"},
	} {
		req, _ := http.NewRequestWithContext(t.Context(), "GET", url+api+"contacts/1", nil)
		req.SetBasicAuth(tc.user, tc.pass)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var body map[string]any
		json.NewDecoder(resp.Body).Decode(&body)
		resp.Body.Close()
		if resp.StatusCode != 401 || body["code"] != tc.code {
			t.Errorf("%s/%s: %d %v", tc.user, tc.pass, resp.StatusCode, body)
		}
	}
}

func TestSimulator_TagPaging(t *testing.T) {
	sim := simulator.New(user, password)
	for i := uint64(1); i <= 25; i++ {
		sim.AddTag(i, fmt.Sprint("t", i))
	}
	url, stop := sim.Start()
	defer stop()
	for _, tc := range []struct {
		query      string
		n          int
		first, raw string
	}{
		{"", 10, "1", ""},
		{"?limit=100", 25, "1", ""},
		{"?limit=10&offset=20", 5, "21", ""},
		{"?limit=10&offset=30", 0, "", `"result":[]`},
	} {
		a := send(t, "GET", url+api+"tags"+tc.query, "", true)
		result, _ := a.json["result"].([]any)
		if len(result) != tc.n || a.json["total_count"] != 25.0 {
			t.Errorf("%q: %d tags, total %v", tc.query, len(result), a.json["total_count"])
			continue
		}
		if tc.n > 0 && result[0].(map[string]any)["ID"] != tc.first {
			t.Errorf("%q: first %v", tc.query, result[0])
		}
		if !strings.Contains(a.body, tc.raw) {
			t.Errorf("%q: %s", tc.query, a.body)
		}
	}
}

func TestSimulator_StateChanges(t *testing.T) {
	sim, _ := start(t)
	if !sim.SetContactTags(1, 3) || !sim.SetField(1, "7", "platinum") || !sim.RenameTag(3, "Trial 2") {
		t.Fatal("a change to an existing contact or tag failed")
	}
	if sim.SetField(99, "7", "x") || sim.SetContactTags(99) || sim.RenameTag(99, "x") || sim.DeleteTag(99) || sim.DeleteContact(99) {
		t.Error("a change to a missing contact or tag succeeded")
	}
	c, _ := sim.Contact(1)
	if c.Fields["7"] != "platinum" || len(c.TagIDs) != 1 || c.TagIDs[0] != 3 {
		t.Errorf("contact = %+v", c)
	}
	c.Fields["7"] = "changed by the caller"
	if again, _ := sim.Contact(1); again.Fields["7"] != "platinum" {
		t.Error("Contact returned the simulator's own map")
	}
	sim.DeleteTag(3)
	if c, _ := sim.Contact(1); len(c.TagIDs) != 0 {
		t.Errorf("deleted tag still on the contact: %v", c.TagIDs)
	}
	if !sim.DeleteContact(1) {
		t.Error("DeleteContact(1) = false")
	}
	if _, ok := sim.Contact(1); ok {
		t.Error("contact 1 still there")
	}
}

func TestSimulator_FaultsQueueInOrderAndCount(t *testing.T) {
	sim, url := start(t)
	sim.FailNext(funnelkit.EndpointContact, 1, 503)
	sim.FailWith(funnelkit.EndpointContact, 1, funnelkit.KindEmptyBody)
	sim.FailWith(funnelkit.EndpointContact, 1, funnelkit.KindHTML)
	sim.FailWith(funnelkit.EndpointContact, 1, funnelkit.KindInvalidJSON)
	want := []int{503, 200, 403, 200, 200}
	for i, status := range want {
		a := send(t, "GET", url+api+"contacts/1", "", true)
		if a.status != status {
			t.Errorf("request %d: status %d, want %d", i, a.status, status)
		}
	}
	if a := send(t, "GET", url+api+"tags", "", true); a.status != 200 {
		t.Errorf("faults leaked to another endpoint: %d", a.status)
	}
	if sim.RequestsTo(funnelkit.EndpointContact) != 5 || sim.RequestsTo(funnelkit.EndpointTags) != 1 || sim.Requests() != 6 {
		t.Errorf("counts: contact %d, tags %d, total %d", sim.RequestsTo(funnelkit.EndpointContact), sim.RequestsTo(funnelkit.EndpointTags), sim.Requests())
	}
	sim.FailNext(funnelkit.EndpointContact, 3, 500)
	sim.ClearFaults()
	if a := send(t, "GET", url+api+"contacts/1", "", true); a.status != 200 {
		t.Errorf("after ClearFaults: %d", a.status)
	}
}

func TestSimulator_FaultOnUnknownEndpointPanics(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Error("no panic")
		}
	}()
	simulator.New(user, password).FailNext("GET contact/{id}", 1, 500)
}

func TestSimulator_CloseEndsHungRequests(t *testing.T) {
	sim := simulator.New(user, password)
	sim.SampleData()
	url, stop := sim.Start()
	sim.Hang(funnelkit.EndpointSetFields, 1)
	done := make(chan error, 1)
	go func() {
		req, _ := http.NewRequest("POST", url+api+"contacts/1/fields", strings.NewReader(`{"fields":{"7":"x"}}`))
		req.SetBasicAuth(user, password)
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			resp.Body.Close()
		}
		done <- err
	}()
	for sim.RequestsTo(funnelkit.EndpointSetFields) == 0 {
		select {
		case err := <-done:
			t.Fatalf("request ended before the stop: %v", err)
		default:
		}
		runtime.Gosched() // until the request has arrived
	}
	stop()
	select {
	case err := <-done:
		if err == nil {
			t.Error("the hung request got an answer")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("stop did not end the hung request")
	}
	stop() // twice is harmless
}

func TestSimulator_ConcurrentUse(t *testing.T) {
	sim, url := start(t)
	c, err := funnelkit.New(funnelkit.Config{BaseURL: url, User: user, Password: password})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			id := domain.ContactID(i%2 + 1)
			sim.SetField(id, "20", fmt.Sprint(i))
			sim.SetContactTags(id, uint64(i%3+1))
			sim.AddTag(uint64(10+i), "x")
			if _, err := c.Contact(t.Context(), id); err != nil {
				t.Error(err)
			}
			if err := c.SetFields(t.Context(), id, map[string]string{"21": "y"}); err != nil {
				t.Error(err)
			}
			sim.FieldWrites()
			sim.Contact(id)
		})
	}
	wg.Wait()
	if n := len(sim.FieldWrites()); n != 8 {
		t.Errorf("%d writes", n)
	}
}

func TestSimulator_Listen(t *testing.T) {
	sim := simulator.New(user, password)
	url, stop, err := sim.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	if !strings.HasPrefix(url, "http://127.0.0.1:") {
		t.Errorf("url %q", url)
	}
	if _, _, err := sim.Listen("256.0.0.1:0"); err == nil {
		t.Error("Listen on a bad address succeeded")
	}
}

func TestSimulator_OutageFailsEveryRequestUntilItEnds(t *testing.T) {
	tests := []struct {
		outage simulator.Outage
		kind   funnelkit.Kind
		status int
	}{
		{simulator.OutageDown, funnelkit.KindUnreachable, 0},
		{simulator.OutageSlow, funnelkit.KindUnreachable, 0},
		{simulator.OutageServer, funnelkit.KindServer, 500},
		{simulator.OutageChallenge, funnelkit.KindHTML, 200},
		{simulator.OutageAuth, funnelkit.KindAuth, 401},
	}
	for _, tt := range tests {
		t.Run(tt.outage.String(), func(t *testing.T) {
			sim, url := start(t)
			c, err := funnelkit.New(funnelkit.Config{BaseURL: url, User: user, Password: password, Timeout: 200 * time.Millisecond})
			if err != nil {
				t.Fatal(err)
			}
			sim.StartOutage(tt.outage)
			for _, id := range []domain.ContactID{1, 2, 2} {
				_, err := c.Contact(t.Context(), id)
				var fe *funnelkit.Error
				if !errors.As(err, &fe) || fe.Kind != tt.kind || fe.Status != tt.status || !fe.Temporary() {
					t.Fatalf("Contact(%d) during the outage: %v; want kind %v, status %d, temporary", id, err, tt.kind, tt.status)
				}
			}
			if _, err := c.Tags(t.Context()); err == nil {
				t.Fatal("Tags answered during the outage")
			}
			// Go's transport may send a GET again on a dropped connection.
			got := sim.OutageRequests()
			if got[1] < 1 || got[2] < 2 || got[1] > 2 || got[2] > 4 || got[0] < 1 {
				t.Errorf("OutageRequests = %v, want 1 (or 2) for contact 1, 2 (or 4) for contact 2, some for tags (0)", got)
			}
			sim.EndOutage()
			if ct, err := c.Contact(t.Context(), 1); err != nil || ct.Email != "ann@example.com" {
				t.Fatalf("after the outage: %+v, %v", ct, err)
			}
		})
	}
}

func TestSimulator_StartOutage_UnknownPanics(t *testing.T) {
	sim := simulator.New(user, password)
	defer func() {
		if recover() == nil {
			t.Fatal("no panic")
		}
	}()
	sim.StartOutage(simulator.Outage(99))
}
