package funnelkit

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"

	"github.com/usersync/usersync/domain"
)

func TestDecodeContact_IncompleteAnswerIsAnError(t *testing.T) {
	for _, j := range []string{`{"id":12,"fields":{}}`, `{"id":12,"tags":null,"fields":{}}`, `{"id":12,"tags":[]}`} {
		if _, err := decodeContact(json.RawMessage(j)); err == nil {
			t.Errorf("%s decoded: an answer without tags or fields would strip the user", j)
		}
	}
}

func TestDecodeContact_OddTypes(t *testing.T) {
	tests := []struct {
		name       string
		json       string
		wantFields map[string]string // checked keys only
		absent     []string          // keys that must not be in Fields
		wantTags   []domain.Tag      // nil: not checked
		wantEmail  string
	}{
		{name: "id as a string", json: `{"id":"12","email":"a@example.com","tags":[],"fields":{}}`,
			wantFields: map[string]string{"id": "12"}, wantEmail: "a@example.com"},
		{name: "numbers in columns and fields",
			json:       `{"id":12,"wpid":0,"status":1,"score":-3.25,"big":1e3,"fields":{"14":42,"15":0.5},"tags":[]}`,
			wantFields: map[string]string{"wpid": "0", "status": "1", "score": "-3.25", "big": "1000", "14": "42", "15": "0.5"}},
		{name: "booleans as PHP prints them", json: `{"id":12,"fields":{"1":true,"2":false},"tags":[]}`,
			wantFields: map[string]string{"1": "1", "2": ""}},
		{name: "null is left out", json: `{"id":12,"email":null,"f_name":null,"fields":{"3":null},"tags":[]}`,
			absent: []string{"f_name", "3", "email"}},
		{name: "textarea keeps <br />", json: `{"id":12,"fields":{"11":"one<br />\r\ntwo"},"tags":[]}`,
			wantFields: map[string]string{"11": "one<br />\r\ntwo"}},
		{name: "checkbox list joined", json: `{"id":12,"fields":{"15":["Email","SMS",3]},"tags":[]}`,
			wantFields: map[string]string{"15": "Email, SMS, 3"}},
		{name: "objects are not fields", json: `{"id":12,"avatar":{"url":"x"},"lists":[{"ID":1}],"fields":{"18":{"a":"b"}},"tags":[]}`,
			absent: []string{"avatar", "lists", "18"}},
		{name: "empty fields as PHP's []", json: `{"id":12,"fields":[],"tags":[]}`,
			absent: []string{"fields", "tags"}, wantTags: []domain.Tag{}},
		{name: "fields as a PHP list are keyed by index", json: `{"id":12,"fields":["a","b"],"tags":[]}`,
			wantFields: map[string]string{"0": "a", "1": "b"}},
		{name: "column wins over a custom field of the same name", json: `{"id":12,"f_name":"Ann","fields":{"f_name":"x"},"tags":[]}`,
			wantFields: map[string]string{"f_name": "Ann"}},
		{name: "tag ids as numbers and strings, sorted, repeats dropped",
			json:     `{"id":12,"tags":[{"ID":"7","name":"B"},{"ID":5,"name":"A"},{"ID":"5","name":"A again"}],"fields":{}}`,
			wantTags: []domain.Tag{{ID: 5, Name: "A"}, {ID: 7, Name: "B"}}},
		{name: "tags keyed by id, lower-case id, null name, escaped name",
			json:     `{"id":12,"tags":{"9":{"id":9,"name":null},"3":{"ID":3,"name":"Tom &amp; Jerry"}},"fields":{}}`,
			wantTags: []domain.Tag{{ID: 3, Name: "Tom & Jerry"}, {ID: 9, Name: ""}}},
		{name: "email kept as given, not in Fields", json: `{"id":12,"email":" Ann@Example.com ","tags":[],"fields":{}}`,
			wantEmail: " Ann@Example.com ", absent: []string{"email"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := decodeContact(json.RawMessage(tt.json))
			if err != nil {
				t.Fatal(err)
			}
			if got.ID != 12 {
				t.Errorf("ID = %v", got.ID)
			}
			if got.Email != tt.wantEmail {
				t.Errorf("Email = %q, want %q", got.Email, tt.wantEmail)
			}
			for k, v := range tt.wantFields {
				if g, ok := got.Fields[k]; !ok || g != v {
					t.Errorf("Fields[%q] = %q (%v), want %q", k, g, ok, v)
				}
			}
			for _, k := range tt.absent {
				if v, ok := got.Fields[k]; ok {
					t.Errorf("Fields[%q] = %q, want absent", k, v)
				}
			}
			if tt.wantTags != nil && !reflect.DeepEqual(got.Tags, tt.wantTags) {
				t.Errorf("Tags = %#v, want %#v", got.Tags, tt.wantTags)
			}
		})
	}
}

func TestDecodeContact_Refuses(t *testing.T) {
	tests := []struct{ name, json, want string }{
		{"not an object", `"x"`, "want an object"},
		{"no id", `{"email":"a@example.com"}`, "no valid id"},
		{"id zero", `{"id":0}`, "no valid id"},
		{"negative id", `{"id":-3}`, "no valid id"},
		{"fractional id", `{"id":12.5}`, "no valid id"},
		{"id true", `{"id":true}`, "no valid id"},
		{"tag without id", `{"id":12,"tags":[{"name":"VIP"}]}`, "tag #1: no ID"},
		{"tag with a name as id", `{"id":12,"tags":[{"ID":5},{"ID":"VIP"}]}`, `tag #2: no valid ID (got "VIP")`},
		{"tags a string", `{"id":12,"tags":"VIP"}`, "want a list"},
		{"tag a number", `{"id":12,"tags":[5]}`, "want an object"},
		{"fields a string", `{"id":12,"fields":"x"}`, "want an object"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := decodeContact(json.RawMessage(tt.json))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("err = %v, want %q", err, tt.want)
			}
		})
	}
}

func TestScalar(t *testing.T) {
	tests := []struct {
		in     string
		want   string
		wantOK bool
	}{
		{`"x"`, "x", true}, {`12`, "12", true}, {`-0.50`, "-0.50", true}, {`2.5e2`, "250", true},
		{`true`, "1", true}, {`false`, "", true}, {`null`, "", false}, {`[1]`, "", false}, {`{}`, "", false}, {``, "", false},
	}
	for _, tt := range tests {
		got, ok := scalar(json.RawMessage(tt.in))
		if got != tt.want || ok != tt.wantOK {
			t.Errorf("scalar(%s) = %q, %v; want %q, %v", tt.in, got, ok, tt.want, tt.wantOK)
		}
	}
}
