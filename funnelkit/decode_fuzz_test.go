package funnelkit

import (
	"encoding/json"
	"html"
	"os"
	"reflect"
	"strconv"
	"strings"
	"testing"

	"github.com/usersync/usersync/domain"
)

// FuzzDecodeContact feeds decodeContact any bytes as the result of GET
// v3/contacts/{id}. It never panics; an error names the contact; a decoded
// contact has a positive id, fields and tags that are never nil, tags with
// positive ids sorted without repeats; and the contact, written back the
// way FunnelKit writes one, decodes to itself.
func FuzzDecodeContact(f *testing.F) {
	if b, err := os.ReadFile("testdata/contact.json"); err == nil {
		var env struct {
			Result json.RawMessage `json:"result"`
		}
		if json.Unmarshal(b, &env) == nil {
			f.Add([]byte(env.Result))
		}
	}
	for _, s := range []string{
		`{"id":1,"email":"a@x","fields":{},"tags":[]}`,
		`{"id":"7","email":null,"fields":[],"tags":{"2":{"ID":"3","name":"Tom &amp; Jerry"},"1":{"id":1}}}`,
		`{"id":2,"fields":{"7":["a",1,true,null]},"tags":[{"ID":5},{"ID":5,"name":"dup"}],"points":1e3,"f_name":"Ann"}`,
		`{"id":0,"fields":{},"tags":[]}`,
		`{"id":3,"fields":{},"tags":[{"name":"no id"}]}`,
		`{"id":3,"fields":{}}`,
		`[]`, `null`, `"x"`, `{"id":18446744073709551616,"fields":{},"tags":[]}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		c, err := decodeContact(raw)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "contact") {
				t.Fatalf("error %q does not name the contact", err)
			}
			if !reflect.DeepEqual(c, domain.CRMContact{}) {
				t.Fatalf("error %v with a contact %+v", err, c)
			}
			return
		}
		if c.ID == 0 || c.Fields == nil || c.Tags == nil {
			t.Fatalf("decoded %+v: want a positive id, fields and tags", c)
		}
		for i, tag := range c.Tags {
			if tag.ID == 0 || i > 0 && tag.ID <= c.Tags[i-1].ID {
				t.Fatalf("tags %+v: want positive ids, sorted, no repeats", c.Tags)
			}
		}
		// Written back as FunnelKit writes it: names HTML-escaped, every
		// field a string.
		tags := make([]map[string]any, 0, len(c.Tags))
		for _, tag := range c.Tags {
			tags = append(tags, map[string]any{"ID": tag.ID, "name": html.EscapeString(tag.Name)})
		}
		fields := map[string]string{}
		for k, v := range c.Fields {
			if k != "id" {
				fields[k] = v
			}
		}
		b, err := json.Marshal(map[string]any{"id": c.ID, "email": c.Email, "fields": fields, "tags": tags})
		if err != nil {
			t.Fatal(err)
		}
		again, err := decodeContact(b)
		if err != nil {
			t.Fatalf("%s decoded to %+v, written back as %s it fails: %v", raw, c, b, err)
		}
		c.Fields["id"] = strconv.FormatUint(uint64(c.ID), 10) // the id column, as written back
		if !reflect.DeepEqual(again, c) && validUTF8(c) {
			t.Fatalf("round trip:\n%s\n%+v\n%s\n%+v", raw, c, b, again)
		}
	})
}

// validUTF8 reports whether every string of c is valid UTF-8 (JSON cannot
// carry anything else unchanged).
func validUTF8(c domain.CRMContact) bool {
	ok := true
	for k, v := range c.Fields {
		ok = ok && strings.ToValidUTF8(k, "\uFFFD") == k && strings.ToValidUTF8(v, "\uFFFD") == v
	}
	for _, tag := range c.Tags {
		ok = ok && strings.ToValidUTF8(tag.Name, "\uFFFD") == tag.Name
	}
	return ok && strings.ToValidUTF8(c.Email, "\uFFFD") == c.Email
}
