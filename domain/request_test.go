package domain_test

import (
	"reflect"
	"strings"
	"testing"

	"github.com/usersync/usersync/domain"
)

func TestNormalizeAction(t *testing.T) {
	tests := []struct {
		raw       string
		want      string
		wantKnown bool
	}{
		{"add", domain.ActionAdd, true},
		{"update", domain.ActionUpdate, true},
		{"update_tags", domain.ActionUpdateTags, true},
		{"test", domain.ActionTest, true},
		{"ADD", domain.ActionAdd, true},
		{" Update_Tags\n", domain.ActionUpdateTags, true},
		{"add_user", domain.ActionAdd, true},
		{"Add_User ", domain.ActionAdd, true},
		{"delete", "delete", false},
		{" Remove_Tags ", "remove_tags", false},
		{"add user", "add user", false},
		{"", "", false},
	}
	for _, tt := range tests {
		got, known := domain.NormalizeAction(tt.raw)
		if got != tt.want || known != tt.wantKnown {
			t.Errorf("NormalizeAction(%q) = %q, %v; want %q, %v", tt.raw, got, known, tt.want, tt.wantKnown)
		}
	}
}

func TestParseBool(t *testing.T) {
	for _, v := range []string{"1", "true", "TRUE", "True", "yes", "YES", "on", " on ", "\ttrue\n"} {
		if got, err := domain.ParseBool("async", v); err != nil || !got {
			t.Errorf("ParseBool(%q) = %v, %v; want true", v, got, err)
		}
	}
	for _, v := range []string{"0", "false", "FALSE", "no", "No", "off", "", "   "} {
		if got, err := domain.ParseBool("async", v); err != nil || got {
			t.Errorf("ParseBool(%q) = %v, %v; want false", v, got, err)
		}
	}
	for _, v := range []string{"2", "-1", "y", "n", "t", "f", "enabled", "truee", "1 0"} {
		got, err := domain.ParseBool("send_notification", v)
		if err == nil {
			t.Errorf("ParseBool(%q) = %v, want an error", v, got)
			continue
		}
		if got {
			t.Errorf("ParseBool(%q) returned true with its error", v)
		}
		if msg := err.Error(); !strings.HasPrefix(msg, "send_notification must be one of") || !strings.Contains(msg, `"`+v+`"`) {
			t.Errorf("ParseBool(%q) error %q does not name the flag and the value", v, msg)
		}
	}
}

func TestParseBool_LongValue_IsCutInTheError(t *testing.T) {
	long := strings.Repeat("x", 500)
	_, err := domain.ParseBool("async", long)
	if err == nil {
		t.Fatal("no error")
	}
	if msg := err.Error(); strings.Contains(msg, long) || !strings.Contains(msg, strings.Repeat("x", 40)+"…") {
		t.Fatalf("error %q: want the value cut after 40 bytes", msg)
	}
}

func webhook(action string, params map[string]string) domain.WebhookReceived {
	return domain.WebhookReceived{WebhookID: "wh-1", Action: action, ContactID: "12", Params: params}
}

func TestParseRequest(t *testing.T) {
	tests := []struct {
		name   string
		action string
		params map[string]string
		want   domain.Request
	}{
		{
			name:   "Add_WithNoParams_AsksForNothing",
			action: "add",
			want:   domain.Request{Action: domain.ActionAdd},
		},
		{
			name:   "AddUserAlias_IsAdd",
			action: "add_user",
			want:   domain.Request{Action: domain.ActionAdd},
		},
		{
			name:   "Action_IsCaseAndSpaceInsensitive",
			action: " UPDATE ",
			want:   domain.Request{Action: domain.ActionUpdate},
		},
		{
			name:   "Flags_AreRead",
			action: "add",
			params: map[string]string{"send_notification": "yes", "async": "1"},
			want:   domain.Request{Action: domain.ActionAdd, SendNotification: true, Async: true},
		},
		{
			name:   "Role_IsTrimmedButKeepsItsCase",
			action: "update",
			params: map[string]string{"role": "  Customer "},
			want:   domain.Request{Action: domain.ActionUpdate, Role: "Customer"},
		},
		{
			name:   "Email_IsNormalizedButKeepsItsCase",
			action: "update",
			params: map[string]string{"email": " Ann%40Example.com "},
			want:   domain.Request{Action: domain.ActionUpdate, Email: "Ann@Example.com"},
		},
		{
			name:   "Tags_AreSplitOnCommasTrimmedAndEmptyEntriesDropped",
			action: "update_tags",
			params: map[string]string{"tags": " 5, VIP Members ,,7 , "},
			want:   domain.Request{Action: domain.ActionUpdateTags, Tags: []string{"5", "VIP Members", "7"}, HasTags: true},
		},
		{
			name:   "EmptyTagsParam_IsPresentAndEmpty_ItClearsTheTags",
			action: "update_tags",
			params: map[string]string{"tags": ""},
			want:   domain.Request{Action: domain.ActionUpdateTags, HasTags: true},
		},
		{
			name:   "OnlyCommasInTags_IsPresentAndEmpty",
			action: "update_tags",
			params: map[string]string{"tags": " , ,"},
			want:   domain.Request{Action: domain.ActionUpdateTags, HasTags: true},
		},
		{
			name:   "AbsentTagsParam_IsNotAnEmptyOne",
			action: "update_tags",
			params: map[string]string{"role": "customer"},
			want:   domain.Request{Action: domain.ActionUpdateTags, Role: "customer"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := domain.ParseRequest(webhook(tt.action, tt.params))
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("got  %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

func TestParseRequest_Refuses(t *testing.T) {
	tests := []struct {
		name    string
		action  string
		params  map[string]string
		wantMsg string
	}{
		{"UnknownAction", "delete", nil, `unknown wpf_action "delete"`},
		{"EmptyAction", "", nil, `unknown wpf_action ""`},
		{"TestAction_IsNotACommand", "test", nil, `unknown wpf_action "test"`},
		{"LongAction_IsCutInTheMessage", strings.Repeat("a", 100), nil, `"` + strings.Repeat("a", 40) + `…"`},
		{"BadSendNotification", "add", map[string]string{"send_notification": "maybe"}, `send_notification must be one of`},
		{"BadAsync", "add", map[string]string{"async": "later", "tags": "5"}, `async must be one of`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := domain.ParseRequest(webhook(tt.action, tt.params))
			if err == nil {
				t.Fatalf("accepted: %+v", got)
			}
			if !reflect.DeepEqual(got, domain.Request{}) {
				t.Errorf("a refused request came with values: %+v", got)
			}
			if !strings.Contains(err.Error(), tt.wantMsg) {
				t.Errorf("error %q, want it to contain %q", err, tt.wantMsg)
			}
		})
	}
}
