package http

import (
	"bytes"
	"fmt"
	"mime/multipart"
	"net/http/httptest"
	"net/url"
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
		{"10,001 query parameters", "GET", "/?wpf_action=add" + strings.Repeat("&a=1", 10000), "", "", nil,
			"the query string has 10001 parameters, more than the 1000 a webhook may have"},
		{"as many query parameters as allowed", "GET", "/?wpf_action=add" + strings.Repeat("&a=1", maxParams-1), "", "",
			map[string]string{"wpf_action": "add", "a": "1"}, ""},
		{"too many form fields", "POST", "/", "application/x-www-form-urlencoded", "wpf_action=add" + strings.Repeat("&a=1", 10000), nil,
			"the form body has 10001 parameters, more than the 1000"},
		{"too many JSON fields", "POST", "/", "application/json", `{"wpf_action":"add"` + jsonFields(1000) + `}`, nil,
			"the JSON body has 1001 fields, more than the 1000"},
		{"a bad escape drops only its pair", "GET", "/?wpf_action=add&bad=%zz&contact_id=3", "", "",
			map[string]string{"wpf_action": "add", "contact_id": "3"}, ""},
		{"a NUL byte in a query value", "GET", "/?wpf_action=add&first_name=An%00n", "", "", nil, `parameter "first_name" holds a NUL byte`},
		{"a NUL byte in a JSON value", "POST", "/", "application/json", `{"wpf_action":"add","email":"a\u0000@b.c"}`, nil, `parameter "email" holds a NUL byte`},
		{"a NUL byte in a name", "POST", "/", "application/x-www-form-urlencoded", "wpf_action=add&x%00y=1", nil, `parameter name "x\x00y" holds a NUL byte`},
		{"invalid UTF-8 in a value", "GET", "/?wpf_action=add&last_name=Caf%E9", "", "", nil, `parameter "last_name" is not valid UTF-8`},
		{"invalid UTF-8 in a form name", "POST", "/", "application/x-www-form-urlencoded", "wpf_action=add&%FF=1", nil, `parameter name "\xff" holds a NUL byte or invalid UTF-8`},
		{"the access key's value is not shown", "GET", "/?wpf_action=add&access_key=sec%00ret", "", "", nil, `parameter "access_key" holds a NUL byte: send text without it`},
		{"invalid UTF-8 in a JSON body", "POST", "/", "application/json", "{\"wpf_action\":\"add\",\"first_name\":\"Caf\xe9\"}", nil, "the JSON body is not valid UTF-8"},
		{"UTF-8 text is kept", "GET", "/?wpf_action=add&first_name=Zo%C3%AB%20%F0%9F%98%80", "", "",
			map[string]string{"wpf_action": "add", "first_name": "Zoë 😀"}, ""},
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

// jsonFields is n more JSON fields, f1 to fn, to follow a first one.
func jsonFields(n int) string {
	var b strings.Builder
	for i := range n {
		fmt.Fprintf(&b, `,"f%d":"v"`, i+1)
	}
	return b.String()
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

// parseQuery must read a query as url.ParseQuery does, keeping the first
// value of each name.
func TestParseQuery_AsNetURLFirstValues(t *testing.T) {
	for _, q := range []string{
		"", "a=1", "a=1&a=2", "a", "a=", "=1", "&&a=1&", "a=1;b=2&c=3", "a=%zz&b=2", "%zz=1&b=2",
		"a+b=c+d&e=%41%42", "a=1=2", "x=%E9&y=%00", "a=1&;&b=2", "%=1", "a=%4",
	} {
		want, wantErr := url.ParseQuery(q)
		got := map[string]string{}
		err := parseQuery(q, got)
		if (err == nil) != (wantErr == nil) || (err != nil && err.Error() != wantErr.Error()) {
			t.Errorf("%q: error %v, want %v", q, err, wantErr)
		}
		if len(got) != len(want) {
			t.Errorf("%q: %v, want the first values of %v", q, got, want)
		}
		for k, vs := range want {
			if got[k] != vs[0] {
				t.Errorf("%q: %s=%q, want %q", q, k, got[k], vs[0])
			}
		}
	}
}

// secretParam must find the secret words in any case, as a lower-case
// copy of the name would.
func TestSecretParam_AnyCase(t *testing.T) {
	for name, want := range map[string]bool{
		"access_key": true, "ACCESS_KEY": true, "Password": true, "user_pass": true, "api_Secret": true,
		"TOKEN": true, "monkey": true, "\u212Aey": true, "email": false, "first_name": false, "": false, "ke": false, "tags": false,
	} {
		if got := secretParam(name); got != want {
			t.Errorf("secretParam(%q) = %v, want %v", name, got, want)
		}
		if old := strings.Contains(strings.ToLower(name), "key") || strings.Contains(strings.ToLower(name), "pass") ||
			strings.Contains(strings.ToLower(name), "secret") || strings.Contains(strings.ToLower(name), "token"); old != want {
			t.Errorf("%q: the table disagrees with a lower-case copy", name)
		}
	}
}
