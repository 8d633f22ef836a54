package funnelkit_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/usersync/usersync/domain"
	"github.com/usersync/usersync/funnelkit"
)

// respond answers every request alike.
func respond(status int, contentType, body string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if contentType != "" {
			w.Header().Set("Content-Type", contentType)
		}
		w.WriteHeader(status)
		fmt.Fprint(w, body)
	}
}

const (
	ctJSON = "application/json; charset=UTF-8"
	ctHTML = "text/html; charset=UTF-8"
)

// failure is a way for the site to fail, and how a Client must report it
// for Contact(12).
type failure struct {
	name      string
	handler   http.HandlerFunc // nil: baseURL is a closed port
	timeout   time.Duration
	kind      funnelkit.Kind
	status    int
	temporary bool
	says      []string
}

func failures() []failure {
	return []failure{
		{name: "401 wrong application password",
			handler: respond(401, ctJSON, `{"code":"incorrect_password","message":"The provided password is an invalid application password.","data":{"status":401}}`),
			kind:    funnelkit.KindAuth, status: 401, temporary: true, says: []string{"--funnelkit-user", "--funnelkit-password", "incorrect_password"}},
		{name: "403 rest_forbidden",
			handler: respond(403, ctJSON, `{"code":"rest_forbidden","message":"Sorry, you are not allowed to do that.","data":{"status":403}}`),
			kind:    funnelkit.KindAuth, status: 403, temporary: true, says: []string{"--funnelkit-password", "administrator", "rest_forbidden"}},
		{name: "404 no such contact",
			handler: respond(404, ctJSON, `{"code":404,"message":"No contact found with given id #12","data":{"status":404}}`),
			kind:    funnelkit.KindNotFound, status: 404, says: []string{"no such contact", "No contact found with given id #12"}},
		{name: "404 no route (plugin off or wrong prefix)",
			handler: respond(404, ctJSON, `{"code":"rest_no_route","message":"No route was found matching the URL and request method.","data":{"status":404}}`),
			kind:    funnelkit.KindClient, status: 404, temporary: true, says: []string{"no such route", "autonami-admin"}},
		{name: "404 theme page",
			handler: respond(404, ctHTML, "<!DOCTYPE html><html><head><title>Page not found &ndash; Shop</title></head><body>Oops</body></html>"),
			kind:    funnelkit.KindHTML, status: 404, temporary: true, says: []string{"HTML page", "Page not found – Shop", "Permalinks"}},
		{name: "404 empty", handler: respond(404, "", ""),
			kind: funnelkit.KindEmptyBody, status: 404, temporary: true, says: []string{"Permalinks"}},
		{name: "400 invalid parameter",
			handler: respond(400, ctJSON, `{"code":"rest_invalid_param","message":"Invalid parameter(s): id","data":{"status":400}}`),
			kind:    funnelkit.KindClient, status: 400, says: []string{"Invalid parameter(s): id"}},
		{name: "429 too many requests", handler: respond(429, "text/plain", "slow down"),
			kind: funnelkit.KindClient, status: 429, temporary: true, says: []string{"slow down"}},
		{name: "500 critical error",
			handler: respond(500, ctJSON, `{"code":"internal_server_error","message":"There has been a critical error on this website.","data":{"status":500}}`),
			kind:    funnelkit.KindServer, status: 500, temporary: true, says: []string{"critical error"}},
		{name: "503 HTML", handler: respond(503, ctHTML, "<html><head><title>503 Service Unavailable</title></head></html>"),
			kind: funnelkit.KindServer, status: 503, temporary: true, says: []string{"503 Service Unavailable"}},
		{name: "502 empty", handler: respond(502, "", ""),
			kind: funnelkit.KindServer, status: 502, temporary: true},
		{name: "200 empty body", handler: respond(200, ctJSON, ""),
			kind: funnelkit.KindEmptyBody, status: 200, temporary: true, says: []string{"pretty permalinks", "Settings → Permalinks"}},
		{name: "200 whitespace only", handler: respond(200, ctJSON, "\r\n  \n"),
			kind: funnelkit.KindEmptyBody, status: 200, temporary: true},
		{name: "200 front page instead of the API", handler: respond(200, ctHTML, "<!DOCTYPE html>\n<html><head><title>Shop</title></head></html>"),
			kind: funnelkit.KindHTML, status: 200, temporary: true, says: []string{"HTML page instead of JSON", "allow the usersync server's address"}},
		{name: "403 CDN challenge page", handler: respond(403, ctHTML, "<!DOCTYPE html><html><head><title>Just a moment...</title></head></html>"),
			kind: funnelkit.KindHTML, status: 403, temporary: true, says: []string{"challenge page", "Just a moment..."}},
		{name: "200 invalid JSON", handler: respond(200, ctJSON, `{"code":200,"result":{"id":`),
			kind: funnelkit.KindInvalidJSON, status: 200, temporary: true, says: []string{"not the JSON FunnelKit gives"}},
		{name: "200 PHP notice before the JSON",
			handler: respond(200, ctJSON, "<br />\n<b>Warning</b>:  Undefined array key \"x\" in <b>/var/www/wp-content/plugins/foo.php</b> on line <b>12</b><br />\n{\"code\":200,\"result\":{\"id\":12}}"),
			kind:    funnelkit.KindInvalidJSON, status: 200, temporary: true, says: []string{"display_errors", "Undefined array key"}},
		{name: "200 JSON list", handler: respond(200, ctJSON, `[]`),
			kind: funnelkit.KindInvalidJSON, status: 200, temporary: true},
		{name: "200 with a WordPress error in the body",
			handler: respond(200, ctJSON, `{"code":404,"message":"No contact found with given id #12","data":{"status":404}}`),
			kind:    funnelkit.KindNotFound, status: 404},
		{name: "200 without result", handler: respond(200, ctJSON, `{"code":200,"message":"Success"}`),
			kind: funnelkit.KindInvalidJSON, status: 200, temporary: true, says: []string{"no result"}},
		{name: "200 another contact", handler: respond(200, ctJSON, `{"code":200,"result":{"id":13,"email":"x@example.com","tags":[],"fields":{}}}`),
			kind: funnelkit.KindWrongContact, status: 200, says: []string{"#13, not #12"}},
		{name: "200 tag without an id", handler: respond(200, ctJSON, `{"code":200,"result":{"id":12,"tags":[{"name":"VIP"}]}}`),
			kind: funnelkit.KindInvalidJSON, status: 200, temporary: true, says: []string{"tag #1: no ID"}},
		{name: "200 larger than the limit",
			handler: respond(200, ctJSON, `{"code":200,"result":{"id":12,"f_name":"`+strings.Repeat("x", funnelkit.MaxBodySize)+`"}}`),
			kind:    funnelkit.KindInvalidJSON, status: 200, temporary: true, says: []string{"larger than 4 MiB"}},
		{name: "redirect loop",
			handler: func(w http.ResponseWriter, r *http.Request) {
				http.Redirect(w, r, "/moved"+r.URL.Path, http.StatusFound)
			},
			kind: funnelkit.KindClient, status: 302, temporary: true, says: []string{"redirected to", "--funnelkit-url"}},
		{name: "connection refused", handler: nil,
			kind: funnelkit.KindUnreachable, temporary: true, says: []string{"cannot reach the site", "refused"}},
		{name: "no answer within the timeout", timeout: 50 * time.Millisecond,
			handler: block,
			kind:    funnelkit.KindUnreachable, temporary: true, says: []string{"no answer within 50ms"}},
		{name: "connection dropped", handler: func(http.ResponseWriter, *http.Request) { panic(http.ErrAbortHandler) },
			kind: funnelkit.KindUnreachable, temporary: true, says: []string{"closed the connection"}},
	}
}

// block answers nothing until the client gives up. It reads the body
// first: net/http notices a closed connection only once the body is read.
func block(w http.ResponseWriter, r *http.Request) {
	io.Copy(io.Discard, r.Body)
	<-r.Context().Done()
}

// closedPort is the base URL of a port nothing listens on.
func closedPort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return "http://" + addr
}

func (f failure) client(t *testing.T) *funnelkit.Client {
	url := ""
	if f.handler == nil {
		url = closedPort(t)
	} else {
		url = startHandler(t, f.handler)
	}
	if f.timeout != 0 {
		return newClient(t, url, withTimeout(f.timeout))
	}
	return newClient(t, url)
}

func TestErrors_EveryFailureHasItsKind(t *testing.T) {
	for _, f := range failures() {
		t.Run(f.name, func(t *testing.T) {
			_, err := f.client(t).Contact(ctx(t), 12)
			var fe *funnelkit.Error
			if !errors.As(err, &fe) {
				t.Fatalf("err = %v (%T), want *funnelkit.Error", err, err)
			}
			if fe.Kind != f.kind || fe.Status != f.status {
				t.Errorf("Kind, Status = %v, %d; want %v, %d (%v)", fe.Kind, fe.Status, f.kind, f.status, err)
			}
			if fe.Temporary() != f.temporary || domain.Temporary(err) != f.temporary {
				t.Errorf("Temporary = %v, want %v", fe.Temporary(), f.temporary)
			}
			if fe.NotFound() != (f.kind == funnelkit.KindNotFound) {
				t.Errorf("NotFound = %v", fe.NotFound())
			}
			if fe.Op != "GET v3/contacts/12" {
				t.Errorf("Op = %q", fe.Op)
			}
			msg := err.Error()
			if !strings.HasPrefix(msg, "funnelkit: GET v3/contacts/12: ") {
				t.Errorf("error %q", msg)
			}
			for _, s := range f.says {
				if !strings.Contains(msg, s) {
					t.Errorf("error %q lacks %q", msg, s)
				}
			}
		})
	}
}

func TestErrors_TimeoutAndCancelUnwrapToTheContextError(t *testing.T) {
	url := startHandler(t, block)

	_, err := newClient(t, url, withTimeout(20*time.Millisecond)).Contact(ctx(t), 12)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("timeout: err = %v, want it to wrap context.DeadlineExceeded", err)
	}

	c, cancel := context.WithCancel(ctx(t))
	cancel()
	_, err = newClient(t, url).Contact(c, 12)
	if !errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), "stopped before an answer") {
		t.Errorf("canceled: err = %v", err)
	}
}

func TestErrors_PostIsNotRedirected(t *testing.T) {
	var posts, gets int
	url := startHandler(t, func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost {
			posts++
			http.Redirect(w, r, "/other"+r.URL.Path, http.StatusMovedPermanently)
			return
		}
		gets++
		fmt.Fprint(w, `{"code":200,"result":{}}`)
	})
	err := newClient(t, url).SetFields(ctx(t), 12, map[string]string{"7": "x"})
	var fe *funnelkit.Error
	if !errors.As(err, &fe) || fe.Kind != funnelkit.KindClient || fe.Status != 301 {
		t.Fatalf("err = %v", err)
	}
	if posts != 1 || gets != 0 {
		t.Errorf("posts %d, gets %d: the POST must not turn into a GET", posts, gets)
	}
}

func TestErrors_FollowsARedirectOfAGet(t *testing.T) {
	url := startHandler(t, func(w http.ResponseWriter, r *http.Request) {
		if !strings.HasPrefix(r.URL.Path, "/new") {
			http.Redirect(w, r, "/new"+r.URL.Path, http.StatusMovedPermanently)
			return
		}
		if u, p, _ := r.BasicAuth(); u != testUser || p != testPassword {
			respond(401, ctJSON, `{"code":"rest_forbidden","message":"no","data":{"status":401}}`)(w, r)
			return
		}
		fmt.Fprint(w, `{"code":200,"result":{"id":12,"email":"a@example.com","tags":[],"fields":{}}}`)
	})
	got, err := newClient(t, url).Contact(ctx(t), 12)
	if err != nil || got.Email != "a@example.com" {
		t.Fatalf("Contact = %+v, %v", got, err)
	}
}

// TestErrors_SimulatorFaultsMatchClientKinds checks that the simulator's
// faults are reported as the kinds they are named after, so end-to-end
// tests can rely on them.
func TestErrors_SimulatorFaultsMatchClientKinds(t *testing.T) {
	kinds := []funnelkit.Kind{funnelkit.KindEmptyBody, funnelkit.KindHTML, funnelkit.KindInvalidJSON,
		funnelkit.KindUnreachable, funnelkit.KindAuth, funnelkit.KindNotFound, funnelkit.KindServer, funnelkit.KindClient}
	for _, kind := range kinds {
		t.Run("FailWith "+kind.String(), func(t *testing.T) {
			sim, url := startSim(t)
			sim.SampleData()
			sim.FailWith(funnelkit.EndpointContact, 1, kind)
			c := newClient(t, url)
			_, err := c.Contact(ctx(t), 1)
			var fe *funnelkit.Error
			if !errors.As(err, &fe) || fe.Kind != kind {
				t.Fatalf("err = %v, want kind %v", err, kind)
			}
			if _, err := c.Contact(ctx(t), 1); err != nil {
				t.Errorf("after the fault: %v", err)
			}
		})
	}
	statuses := map[int]funnelkit.Kind{401: funnelkit.KindAuth, 403: funnelkit.KindAuth, 404: funnelkit.KindNotFound,
		409: funnelkit.KindClient, 500: funnelkit.KindServer, 503: funnelkit.KindServer}
	for status, kind := range statuses {
		t.Run(fmt.Sprint("FailNext ", status), func(t *testing.T) {
			sim, url := startSim(t)
			sim.SampleData()
			sim.FailNext(funnelkit.EndpointSetFields, 2, status)
			c := newClient(t, url)
			for range 2 {
				err := c.SetFields(ctx(t), 1, map[string]string{"7": "x"})
				var fe *funnelkit.Error
				if !errors.As(err, &fe) || fe.Kind != kind || fe.Status != status {
					t.Fatalf("err = %v, want kind %v status %d", err, kind, status)
				}
			}
			if len(sim.FieldWrites()) != 0 {
				t.Error("a failed write was recorded")
			}
			if err := c.SetFields(ctx(t), 1, map[string]string{"7": "x"}); err != nil {
				t.Errorf("after the faults: %v", err)
			}
		})
	}
	t.Run("Hang", func(t *testing.T) {
		sim, url := startSim(t)
		sim.SampleData()
		sim.Hang(funnelkit.EndpointTags, 1)
		_, err := newClient(t, url, withTimeout(50*time.Millisecond)).Tags(ctx(t))
		if !domain.Temporary(err) || !strings.Contains(err.Error(), "no answer within 50ms") {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("wrong password", func(t *testing.T) {
		sim, url := startSim(t)
		sim.SampleData()
		_, err := newClient(t, url, func(c *funnelkit.Config) { c.Password = strings.ReplaceAll(testPassword, " ", "-") }).Contact(ctx(t), 1)
		var fe *funnelkit.Error
		if !errors.As(err, &fe) || fe.Kind != funnelkit.KindAuth || !strings.Contains(err.Error(), "incorrect_password") {
			t.Fatalf("err = %v", err)
		}
	})
}
