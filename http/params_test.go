package http

import (
	"bytes"
	"mime/multipart"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"
)

func TestReadParams(t *testing.T) {
	var mp bytes.Buffer
	mw := multipart.NewWriter(&mp)
	mw.WriteField("wpf_action", "add")
	mw.WriteField("contact_id", "12")
	mw.Close()
	tests := []struct {
		name    string
		method  string
		target  string
		ctype   string
		body    string
		want    map[string]string
		wantErr string
	}{
		{"GET query", "GET", "/?wpf_action=update&contact_id=12&email=ann%40example.com", "", "",
			map[string]string{"wpf_action": "update", "contact_id": "12", "email": "ann@example.com"}, ""},
		{"form body wins over query", "POST", "/?contact_id=1&async=1", "application/x-www-form-urlencoded", "contact_id=12&contact%5Bemail%5D=a%40b.c",
			map[string]string{"contact_id": "12", "async": "1", "contact[email]": "a@b.c"}, ""},
		{"JSON strings, nested and other types", "POST", "/", "application/json; charset=utf-8",
			`{"wpf_action":"add","contact_id":12,"send_notification":true,"contact":{"email":"a@b.c"},"tags":["1","VIP"],"x":null}`,
			map[string]string{"wpf_action": "add", "contact_id": "12", "send_notification": "true", "contact.email": "a@b.c", "tags": "1,VIP", "x": ""}, ""},
		{"JSON without content type", "POST", "/", "", `{"wpf_action":"test"}`, map[string]string{"wpf_action": "test"}, ""},
		{"multipart", "POST", "/", mw.FormDataContentType(), mp.String(), map[string]string{"wpf_action": "add", "contact_id": "12"}, ""},
		{"GET ignores a body", "GET", "/?a=1", "application/json", `not json`, map[string]string{"a": "1"}, ""},
		{"invalid JSON", "POST", "/", "application/json", `{"wpf_action":`, nil, "not valid JSON"},
		{"JSON array", "POST", "/", "application/json", `[1,2]`, nil, "must be an object"},
		{"unknown type", "POST", "/", "application/xml", `<a/>`, nil, "unsupported Content-Type"},
		{"too large", "POST", "/", "application/x-www-form-urlencoded", "a=" + strings.Repeat("x", maxBody), nil, "larger than"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := httptest.NewRequest(tt.method, tt.target, strings.NewReader(tt.body))
			if tt.ctype != "" {
				r.Header.Set("Content-Type", tt.ctype)
			}
			got, err := readParams(r)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil || !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("got %v, %v; want %v", got, err, tt.want)
			}
		})
	}
}

func TestRecordable_DropsSecrets(t *testing.T) {
	got := recordable(map[string]string{
		"wpf_action": "add", "contact_id": "1", "access_key": "k", "ACCESS_KEY": "k", "user_pass": "p",
		"password": "p", "api_token": "t", "client_secret": "s", "role": "customer", "tags": "1,2",
	})
	want := map[string]string{"role": "customer", "tags": "1,2"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %v, want %v", got, want)
	}
}

func TestSecret(t *testing.T) {
	s := NewSecret("right")
	if !s.Matches("right") || s.Matches("wrong") || s.Matches("") || s.String() != "[redacted]" {
		t.Fatal("secret comparison")
	}
	if (Secret{}).Matches("") || NewSecret("").Matches("") {
		t.Fatal("an unset secret matched")
	}
	back, err := SecretFromDigest(s.Digest())
	if err != nil || !back.Matches("right") {
		t.Fatalf("digest round trip: %v", err)
	}
	if _, err := SecretFromDigest("zz"); err == nil {
		t.Fatal("bad digest accepted")
	}
}
