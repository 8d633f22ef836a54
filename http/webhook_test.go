package http

import (
	"context"
	"encoding/json"
	nethttp "net/http"
	"net/http/httptest"
	"net/url"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/usersync/usersync/domain"
	"github.com/usersync/usersync/domain/command"
)

// answeringQueue answers every awaited webhook with out once it is
// submitted.
type answeringQueue struct {
	out command.Outcome

	mu      sync.Mutex
	waiting map[string]chan command.Outcome
}

func (q *answeringQueue) Await(id string) <-chan command.Outcome {
	q.mu.Lock()
	defer q.mu.Unlock()
	ch := make(chan command.Outcome, 1)
	q.waiting[id] = ch
	return ch
}

func (q *answeringQueue) Submit(domain.ContactID) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	for id, ch := range q.waiting {
		out := q.out
		out.WebhookID = id
		ch <- out
		delete(q.waiting, id)
	}
	return nil
}

func (q *answeringQueue) Forget(id string, _ <-chan command.Outcome) {
	q.mu.Lock()
	defer q.mu.Unlock()
	delete(q.waiting, id)
}

// The webhook handler reports through the decorators New stacks: one log
// line (the logging decorator) and one observation (a decorator given in
// the config) per webhook, the HTTP status from the outcome.
func TestWebhook_ReportsThroughTheDecorators(t *testing.T) {
	tests := []struct {
		name        string
		query       url.Values
		out         command.Outcome
		wantStatus  int
		wantAnswer  string
		wantObserve [2]string
		wantLog     map[string]any
	}{
		{"wrong access key", url.Values{"wpf_action": {"add"}, "contact_id": {"1"}, "access_key": {"guessed-key"}}, command.Outcome{},
			403, "", [2]string{"none", "rejected"}, map[string]any{"outcome": "rejected", "status": 403.0, "reason": "Invalid Access Key", "method": "GET"}},
		{"test", url.Values{"wpf_action": {"test"}, "access_key": {"access-key"}}, command.Outcome{},
			200, "processed", [2]string{"test", "processed"}, map[string]any{"webhook_id": "w1", "action": "test", "outcome": "test"}},
		{"processed", url.Values{"wpf_action": {"update"}, "contact_id": {"7"}, "access_key": {"access-key"}},
			command.Outcome{ContactID: 7, Status: command.StatusProcessed, Message: "No changes"},
			200, "processed", [2]string{"update", "processed"},
			map[string]any{"webhook_id": "w1", "action": "update", "contact_id": 7.0, "outcome": "processed", "status": 200.0, "message": "No changes"}},
		{"failed in processing", url.Values{"wpf_action": {"add"}, "contact_id": {"7"}, "access_key": {"access-key"}},
			command.Outcome{ContactID: 7, Status: command.StatusFailed, Err: domain.Fail(domain.ErrCRMRefused, "FunnelKit is down"), Message: "FunnelKit is down"},
			502, "failed", [2]string{"add", "failed"},
			map[string]any{"webhook_id": "w1", "action": "add", "contact_id": 7.0, "outcome": "failed", "status": 502.0, "message": "FunnelKit is down"}},
		{"retrying", url.Values{"wpf_action": {"add"}, "contact_id": {"7"}, "access_key": {"access-key"}},
			command.Outcome{ContactID: 7, Status: command.StatusRetrying, Message: "FunnelKit did not answer; retrying"},
			202, "queued", [2]string{"add", "queued"},
			map[string]any{"webhook_id": "w1", "action": "add", "contact_id": 7.0, "outcome": "retrying", "status": 202.0, "message": "FunnelKit did not answer; retrying"}},
		{"async", url.Values{"wpf_action": {"update"}, "contact_id": {"7"}, "async": {"1"}, "access_key": {"access-key"}}, command.Outcome{},
			202, "queued", [2]string{"update", "queued"},
			map[string]any{"webhook_id": "w1", "action": "update", "contact_id": 7.0, "outcome": "queued", "reason": "Queued"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			logs := &syncBuffer{}
			cfg := testConfig(t, slogJSON(logs))
			cfg.Queue = &answeringQueue{out: tt.out, waiting: map[string]chan command.Outcome{}}
			var observed [][2]string
			var mu sync.Mutex
			cfg.WebhookDecorators = []Decorator{ObserveWebhooks(func(action, outcome string, d time.Duration) {
				mu.Lock()
				defer mu.Unlock()
				observed = append(observed, [2]string{action, outcome})
			})}
			s, err := New(cfg)
			if err != nil {
				t.Fatal(err)
			}
			resp, err := nethttp.Get(serve(t, s) + "/any/path?" + tt.query.Encode())
			if err != nil {
				t.Fatal(err)
			}
			var a webhookAnswer
			err = json.NewDecoder(resp.Body).Decode(&a)
			resp.Body.Close()
			if err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != tt.wantStatus || a.Status != tt.wantAnswer {
				t.Errorf("answered %d %+v, want %d with status %q", resp.StatusCode, a, tt.wantStatus, tt.wantAnswer)
			}
			mu.Lock()
			if !slices.Equal(observed, [][2]string{tt.wantObserve}) {
				t.Errorf("observed %v, want %v", observed, tt.wantObserve)
			}
			mu.Unlock()
			var webhookLines []map[string]any
			for _, line := range strings.Split(strings.TrimSpace(logs.String()), "\n") {
				var l map[string]any
				if json.Unmarshal([]byte(line), &l) == nil && l["msg"] == "webhook" {
					webhookLines = append(webhookLines, l)
				}
			}
			if len(webhookLines) != 1 {
				t.Fatalf("%d webhook lines, want 1:\n%s", len(webhookLines), logs.String())
			}
			l := webhookLines[0]
			for _, k := range []string{"time", "level", "msg", "duration_seconds", "source"} {
				delete(l, k)
			}
			for k, v := range tt.wantLog {
				if l[k] != v {
					t.Errorf("log field %s is %v, want %v", k, l[k], v)
				}
				delete(l, k)
			}
			if len(l) > 0 {
				t.Errorf("log line has more fields: %v", l)
			}
			if strings.Contains(logs.String(), "guessed-key") || strings.Contains(logs.String(), "access-key") {
				t.Errorf("a key is in the log:\n%s", logs.String())
			}
		})
	}
}

// writeAnswer must write what writeJSON writes, whatever the answer holds.
func TestWriteAnswer_AsWriteJSON(t *testing.T) {
	for _, a := range []webhookAnswer{
		{Success: true, Message: "Queued", WebhookID: "01a2317f-c10c-7ce4-b740-d0c80b9864a1", Status: command.StatusQueued},
		{Message: "Invalid Access Key"},
		{Message: `unknown wpf_action "x<y>&z": use add`, WebhookID: "w1", Status: command.StatusFailed},
		{Message: "line\nbreak \\ and \u2028 and é", WebhookID: "w2"},
		{Success: true, Message: "", WebhookID: ""},
	} {
		want, got := httptest.NewRecorder(), httptest.NewRecorder()
		writeJSON(want, 202, a)
		writeAnswer(got, 202, a)
		if got.Body.String() != want.Body.String() || got.Code != want.Code || !reflect.DeepEqual(got.Header(), want.Header()) {
			t.Errorf("%+v:\n got %d %v %q\nwant %d %v %q", a, got.Code, got.Header(), got.Body, want.Code, want.Header(), want.Body)
		}
	}
}

// outcomesFunc is an Outcomes from a function.
type outcomesFunc func(ctx context.Context, id string) (command.Outcome, error)

func (f outcomesFunc) WaitOutcome(ctx context.Context, id string) (command.Outcome, error) {
	return f(ctx, id)
}

// With Outcomes (several nodes), a synchronous answer waits on it, never on
// the queue: the outcome it gives is answered as a local one is, and a
// wait that ends without one answers 202 queued.
func TestWebhook_WithOutcomes_AnswersWhatTheyGiveOrQueuedAfterTheWait(t *testing.T) {
	tests := []struct {
		name       string
		outcomes   outcomesFunc
		wantStatus int
		wantAnswer string
	}{
		{"decided elsewhere: processed", func(_ context.Context, id string) (command.Outcome, error) {
			return command.Outcome{WebhookID: id, ContactID: 7, Status: command.StatusIgnored, Message: "not a member"}, nil
		}, 200, command.StatusIgnored},
		{"decided elsewhere: failed, the recorded kind", func(_ context.Context, id string) (command.Outcome, error) {
			return command.Outcome{WebhookID: id, ContactID: 7, Status: command.StatusFailed, Err: domain.Fail(domain.ErrCRMRefused, "refused")}, nil
		}, 502, command.StatusFailed},
		{"not decided within the wait", func(ctx context.Context, _ string) (command.Outcome, error) {
			<-ctx.Done()
			return command.Outcome{}, ctx.Err()
		}, 202, command.StatusQueued},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// Given a server whose queue would never answer
			cfg := testConfig(t, quietLog())
			cfg.Wait = 50 * time.Millisecond
			cfg.Outcomes = tt.outcomes
			s, err := New(cfg)
			if err != nil {
				t.Fatal(err)
			}
			// When a synchronous webhook comes
			rec := httptest.NewRecorder()
			s.ServeHTTP(rec, httptest.NewRequest("GET", "/?wpf_action=update&contact_id=7&access_key=access-key", nil))
			// Then it is answered from Outcomes
			var a webhookAnswer
			if err := json.Unmarshal(rec.Body.Bytes(), &a); err != nil {
				t.Fatalf("answer %q: %v", rec.Body, err)
			}
			if rec.Code != tt.wantStatus || a.Status != tt.wantAnswer {
				t.Errorf("answer %d %+v, want %d %s", rec.Code, a, tt.wantStatus, tt.wantAnswer)
			}
		})
	}
}
