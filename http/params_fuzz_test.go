package http

import (
	"bytes"
	"encoding/json"
	nethttp "net/http"
	"net/http/httptest"
	"net/url"
	"reflect"
	"strings"
	"testing"
	"unicode/utf8"
)

// paramErrors are the beginnings of every error readParams returns: each
// names what was wrong with the body.
var paramErrors = []string{
	"read body:", "body is larger than", "body is not valid JSON:", "JSON body must be an object",
	"body is not a valid form:", "body is not a valid multipart form:", "unsupported Content-Type",
	"the query string has", "the form body has", "the JSON body has", "the JSON body is not valid UTF-8",
	"parameter name ", "parameter ",
}

// FuzzReadParams feeds readParams any method, query, Content-Type and body.
// It never panics; an error is one of the named ones; GET reads the query
// alone; and what it reads survives a round trip through a form body and,
// when it is valid UTF-8, through a JSON body.
func FuzzReadParams(f *testing.F) {
	f.Add("GET", "wpf_action=add&contact_id=12&access_key=k", "", []byte(nil))
	f.Add("POST", "access_key=k", "application/x-www-form-urlencoded", []byte("wpf_action=update&contact_id=7&tags=3%2C+VIP"))
	f.Add("POST", "", "application/json", []byte(`{"wpf_action":"add","contact_id":"12","n":1.50,"b":true,"z":null,"l":[1,"a"],"o":{"p":{"q":"r"}}}`))
	f.Add("POST", "", "", []byte(` {"wpf_action":"update_tags"}`))
	f.Add("POST", "", "text/plain", []byte("wpf_action=add&contact_id=%zz"))
	f.Add("POST", "", "multipart/form-data; boundary=XyZ", []byte("--XyZ\r\nContent-Disposition: form-data; name=\"wpf_action\"\r\n\r\nadd\r\n--XyZ--\r\n"))
	f.Add("POST", "", "application/xml", []byte("<a/>"))
	f.Add("PUT", "a=1", "application/json", []byte(`[1,2]`))
	f.Fuzz(func(t *testing.T, method, query, contentType string, body []byte) {
		if method != "GET" && method != "HEAD" && method != "PUT" {
			method = "POST"
		}
		req := httptest.NewRequest(method, "/", bytes.NewReader(body))
		req.URL.RawQuery = query
		if contentType != "" {
			req.Header.Set("Content-Type", contentType)
		}
		params, err := readParams(req)
		if err != nil {
			if params != nil {
				t.Fatalf("error %v with params %v", err, params)
			}
			for _, p := range paramErrors {
				if strings.HasPrefix(err.Error(), p) {
					return
				}
			}
			t.Fatalf("error %q names no known problem", err)
		}
		if params == nil {
			t.Fatal("no error and no params")
		}
		if len(params) > maxParams {
			t.Fatalf("%d parameters accepted, more than %d", len(params), maxParams)
		}
		for k, v := range params {
			if !utf8.ValidString(k) || !utf8.ValidString(v) || strings.ContainsRune(k+v, 0) {
				t.Fatalf("parameter %q=%q accepted: invalid UTF-8 or NUL must be refused", k, v)
			}
		}
		if method == "GET" || method == "HEAD" {
			want := map[string]string{}
			for k, vs := range req.URL.Query() {
				want[k] = vs[0]
			}
			if !reflect.DeepEqual(params, want) {
				t.Fatalf("GET read %v, the query is %v", params, want)
			}
		}
		form := url.Values{}
		for k, v := range params {
			form.Set(k, v)
		}
		again := reread(t, "application/x-www-form-urlencoded", []byte(form.Encode()))
		if len(params) > 0 && !reflect.DeepEqual(again, params) {
			t.Fatalf("form round trip: %v became %v", params, again)
		}
		for k, v := range params {
			if !utf8.ValidString(k) || !utf8.ValidString(v) {
				return // JSON cannot carry it
			}
		}
		b, err := json.Marshal(params)
		if err != nil {
			t.Fatal(err)
		}
		if again := reread(t, "application/json", b); !reflect.DeepEqual(again, params) {
			t.Fatalf("JSON round trip: %v became %v", params, again)
		}
	})
}

// reread reads params from a POST body of the given Content-Type.
func reread(t *testing.T, contentType string, body []byte) map[string]string {
	t.Helper()
	req := httptest.NewRequest(nethttp.MethodPost, "/", bytes.NewReader(body))
	req.Header.Set("Content-Type", contentType)
	params, err := readParams(req)
	if err != nil {
		t.Fatalf("re-reading %s %q: %v", contentType, body, err)
	}
	return params
}
