package http

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	nethttp "net/http"
	"net/url"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/usersync/usersync/domain"
)

// maxBody bounds a webhook body. FunnelKit sends a few rows of data.
const maxBody = 1 << 20

// maxParams bounds the parameters of the query string, and those of the
// body, of a webhook (Go's net/url refuses more than 10,000 in a query).
// FunnelKit sends a few dozen.
const maxParams = 1000

// readParams merges the query string and the body (form or JSON) of a
// webhook; the body wins. JSON values are turned into strings the way
// FunnelKit renders merge tags; nested objects become dotted keys. A
// parameter whose name or value holds a NUL byte or is not valid UTF-8 is
// refused: nothing downstream (WordPress, FunnelKit, the recorded event)
// could keep it as sent.
func readParams(r *nethttp.Request) (map[string]string, error) {
	params, err := readRawParams(r)
	if err != nil {
		return nil, err
	}
	if err := checkText(params); err != nil {
		return nil, err
	}
	return params, nil
}

func readRawParams(r *nethttp.Request) (map[string]string, error) {
	params := make(map[string]string, 8)
	if err := checkParamCount("the query string", r.URL.RawQuery); err != nil {
		return nil, err
	}
	// Other errors of a query (a bad escape, a semicolon) only drop the
	// pair they are in, as net/http does for forms.
	_ = parseQuery(r.URL.RawQuery, params)
	if r.Method == nethttp.MethodGet || r.Method == nethttp.MethodHead || r.Body == nil {
		return params, nil
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, maxBody+1))
	if err != nil {
		return nil, fmt.Errorf("read body: %w", err)
	}
	if len(body) > maxBody {
		return nil, fmt.Errorf("body is larger than %d bytes", maxBody)
	}
	if len(strings.TrimSpace(string(body))) == 0 {
		return params, nil
	}
	ct, mediaParams, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	switch {
	case ct == "application/json" || (ct == "" && looksJSON(body)):
		if !utf8.Valid(body) {
			// The decoder would replace the bad bytes with U+FFFD unseen.
			return nil, errors.New("the JSON body is not valid UTF-8: send UTF-8 text")
		}
		var v any
		dec := json.NewDecoder(strings.NewReader(string(body)))
		dec.UseNumber()
		if err := dec.Decode(&v); err != nil {
			return nil, fmt.Errorf("body is not valid JSON: %w", err)
		}
		obj, ok := v.(map[string]any)
		if !ok {
			return nil, errors.New("JSON body must be an object of key/value rows")
		}
		fields := map[string]string{}
		flatten("", obj, fields)
		if len(fields) > maxParams {
			return nil, fmt.Errorf("the JSON body has %d fields, more than the %d a webhook may have: send only the fields usersync reads", len(fields), maxParams)
		}
		for k, v := range fields {
			params[k] = v
		}
	case ct == "application/x-www-form-urlencoded" || ct == "" || ct == "text/plain":
		if err := checkParamCount("the form body", string(body)); err != nil {
			return nil, err
		}
		form := map[string]string{}
		if err := parseQuery(string(body), form); err != nil {
			return nil, fmt.Errorf("body is not a valid form: %w", err)
		}
		for k, v := range form {
			params[k] = v
		}
	case ct == "multipart/form-data":
		form, err := multipart.NewReader(bytes.NewReader(body), mediaParams["boundary"]).ReadForm(maxBody)
		if err != nil {
			return nil, fmt.Errorf("body is not a valid multipart form: %w", err)
		}
		defer form.RemoveAll()
		for k, vs := range form.Value {
			if len(vs) > 0 {
				params[k] = vs[0]
			}
		}
	default:
		return nil, fmt.Errorf("unsupported Content-Type %q: send a form or JSON", ct)
	}
	return params, nil
}

// parseQuery adds the pairs of a query string or form to into, the first
// value of a name winning, and returns the first error, as url.ParseQuery
// does (the pair with the error is dropped; a semicolon is refused), but
// without a []string per name.
func parseQuery(query string, into map[string]string) (err error) {
	for query != "" {
		var pair string
		pair, query, _ = strings.Cut(query, "&")
		if strings.Contains(pair, ";") {
			err = errors.New("invalid semicolon separator in query")
			continue
		}
		if pair == "" {
			continue
		}
		key, value, _ := strings.Cut(pair, "=")
		key, err1 := url.QueryUnescape(key)
		if err1 == nil {
			value, err1 = url.QueryUnescape(value)
		}
		if err1 != nil {
			if err == nil {
				err = err1
			}
			continue
		}
		if _, seen := into[key]; !seen {
			into[key] = value
		}
	}
	return err
}

// checkParamCount refuses a query string or form with more than maxParams
// parameters, counted as net/url counts them.
func checkParamCount(what, raw string) error {
	if raw == "" {
		return nil
	}
	if n := strings.Count(raw, "&") + 1; n > maxParams {
		return fmt.Errorf("%s has %d parameters, more than the %d a webhook may have: send only the fields usersync reads", what, n, maxParams)
	}
	return nil
}

// checkText refuses a parameter whose name or value holds a NUL byte or
// invalid UTF-8, naming the parameter (not its value, which may be a
// secret).
func checkText(params map[string]string) error {
	for k, v := range params {
		name := func() string { return strconv.Quote(domain.Truncate(k, 40)) }
		switch {
		case !utf8.ValidString(k) || strings.IndexByte(k, 0) >= 0:
			return fmt.Errorf("parameter name %s holds a NUL byte or invalid UTF-8: send UTF-8 text", name())
		case !utf8.ValidString(v):
			return fmt.Errorf("parameter %s is not valid UTF-8: send UTF-8 text", name())
		case strings.IndexByte(v, 0) >= 0:
			return fmt.Errorf("parameter %s holds a NUL byte: send text without it", name())
		}
	}
	return nil
}

func looksJSON(b []byte) bool {
	s := strings.TrimSpace(string(b))
	return strings.HasPrefix(s, "{")
}

func flatten(prefix string, obj map[string]any, out map[string]string) {
	for k, v := range obj {
		key := k
		if prefix != "" {
			key = prefix + "." + k
		}
		switch x := v.(type) {
		case map[string]any:
			flatten(key, x, out)
		case string:
			out[key] = x
		case json.Number:
			out[key] = x.String()
		case bool:
			out[key] = strconv.FormatBool(x)
		case nil:
			out[key] = ""
		case []any:
			parts := make([]string, 0, len(x))
			for _, e := range x {
				parts = append(parts, fmt.Sprint(e))
			}
			out[key] = strings.Join(parts, ",")
		default:
			out[key] = fmt.Sprint(x)
		}
	}
}

// recordable drops the access key and anything that looks like a secret
// from the parameters before they are recorded.
func recordable(params map[string]string) map[string]string {
	out := make(map[string]string, len(params))
	for k, v := range params {
		if secretParam(k) {
			continue
		}
		switch k {
		case "wpf_action", "contact_id":
			continue // recorded in their own fields
		}
		out[k] = v
	}
	return out
}

// secretWords are the parts of a parameter name (in any case) that mark it
// as a secret; "key" covers "access_key".
var secretWords = [...]string{"pass", "secret", "token", "key"}

func secretParam(k string) bool {
	for _, w := range secretWords {
		if containsFold(k, w) {
			return true
		}
	}
	return false
}

// containsFold reports whether s holds word (lower-case ASCII) in any
// case, as strings.Contains(strings.ToLower(s), word) does, without the
// lower-case copy for an ASCII name (a name with other letters, whose
// lower case may be ASCII, such as the Kelvin sign, takes that way).
func containsFold(s, word string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= utf8.RuneSelf {
			return strings.Contains(strings.ToLower(s), word)
		}
	}
	for i := 0; i+len(word) <= len(s); i++ {
		if strings.EqualFold(s[i:i+len(word)], word) {
			return true
		}
	}
	return false
}
