package funnelkit

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"html"
	"maps"
	"slices"
	"strconv"
	"strings"

	"github.com/usersync/usersync/domain"
)

// This file is the one place that turns FunnelKit's JSON into domain values.
// FunnelKit is PHP: numbers may come as strings, an empty object as [], and
// a value as null; the decoding is lenient about those and strict about
// what identifies things (contact and tag ids).

// decodeContact maps the result of GET v3/contacts/{id}: email → Email,
// every scalar column → Fields[column], each custom field → Fields[id],
// tags → Tags (sorted by id).
func decodeContact(raw json.RawMessage) (domain.CRMContact, error) {
	obj, err := object(raw)
	if err != nil {
		return domain.CRMContact{}, fmt.Errorf("contact: %w", err)
	}
	id, ok := uintValue(obj["id"])
	if !ok || id == 0 {
		return domain.CRMContact{}, errors.New("contact has no valid id")
	}
	c := domain.CRMContact{ID: domain.ContactID(id), Fields: map[string]string{}, Tags: []domain.Tag{}}
	if email, ok := scalar(obj["email"]); ok {
		c.Email = email
	}
	// Custom fields first, so that a column of the same name wins.
	if raw, ok := obj["fields"]; ok && !isNull(raw) {
		fields, err := keyed(raw)
		if err != nil {
			return domain.CRMContact{}, fmt.Errorf("contact fields: %w", err)
		}
		for id, v := range fields {
			if s, ok := fieldValue(v); ok {
				c.Fields[id] = s
			}
		}
	}
	for _, col := range slices.Sorted(maps.Keys(obj)) {
		if col == "email" || col == "fields" || col == "tags" {
			continue
		}
		if s, ok := scalar(obj[col]); ok {
			c.Fields[col] = s
		}
	}
	if raw, ok := obj["tags"]; ok && !isNull(raw) {
		tags, err := decodeTags(raw)
		if err != nil {
			return domain.CRMContact{}, fmt.Errorf("contact tags: %w", err)
		}
		c.Tags = tags
	}
	// A contact always has tags and fields (empty: [] or {}); an answer
	// without them is degraded, and taking it as "no tags, no fields" would
	// strip the user.
	for _, key := range []string{"tags", "fields"} {
		if v, ok := obj[key]; !ok || isNull(v) {
			return domain.CRMContact{}, fmt.Errorf("contact has no %s list: an incomplete answer", key)
		}
	}
	return c, nil
}

// decodeTags reads a list of tags ([{"ID":5,"name":"VIP"}], or an object of
// them keyed by id), sorted by id; names have their HTML entities decoded.
// A tag without a valid id is an error: dropping it would take the tag away
// from the user.
func decodeTags(raw json.RawMessage) ([]domain.Tag, error) {
	items, err := list(raw)
	if err != nil {
		return nil, err
	}
	tags := make([]domain.Tag, 0, len(items))
	for i, item := range items {
		t, err := decodeTag(item)
		if err != nil {
			return nil, fmt.Errorf("tag #%d: %w", i+1, err)
		}
		tags = append(tags, t)
	}
	return domain.SortTags(tags), nil
}

func decodeTag(raw json.RawMessage) (domain.Tag, error) {
	obj, err := object(raw)
	if err != nil {
		return domain.Tag{}, err
	}
	idRaw, ok := obj["ID"]
	if !ok {
		idRaw = obj["id"]
	}
	id, ok := uintValue(idRaw)
	if !ok || id == 0 {
		if len(idRaw) == 0 {
			return domain.Tag{}, errors.New("no ID")
		}
		return domain.Tag{}, fmt.Errorf("no valid ID (got %s)", clip(string(idRaw), 40))
	}
	name, _ := scalar(obj["name"])
	// WordPress stores names escaped ("Tom &amp; Jerry"); keep what the
	// FunnelKit screens show.
	return domain.Tag{ID: id, Name: html.UnescapeString(name)}, nil
}

// object reads a JSON object. PHP encodes an empty one as [].
func object(raw json.RawMessage) (map[string]json.RawMessage, error) {
	raw = bytes.TrimSpace(raw)
	if bytes.Equal(raw, []byte("[]")) {
		return map[string]json.RawMessage{}, nil
	}
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(raw, &obj); err != nil || obj == nil {
		return nil, fmt.Errorf("want an object, got %s", jsonType(raw))
	}
	return obj, nil
}

// keyed reads an object, or a PHP list whose keys are its indexes.
func keyed(raw json.RawMessage) (map[string]json.RawMessage, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) > 0 && raw[0] == '[' {
		var items []json.RawMessage
		if err := json.Unmarshal(raw, &items); err != nil {
			return nil, fmt.Errorf("want an object, got %s", jsonType(raw))
		}
		out := make(map[string]json.RawMessage, len(items))
		for i, it := range items {
			out[strconv.Itoa(i)] = it
		}
		return out, nil
	}
	return object(raw)
}

// list reads an array, or an object whose values are the items (in key
// order). null and {} are empty.
func list(raw json.RawMessage) ([]json.RawMessage, error) {
	raw = bytes.TrimSpace(raw)
	if isNull(raw) {
		return nil, nil
	}
	if len(raw) > 0 && raw[0] == '{' {
		obj, err := object(raw)
		if err != nil {
			return nil, err
		}
		keys := slices.Collect(maps.Keys(obj))
		slices.SortFunc(keys, func(a, b string) int {
			na, ea := strconv.ParseUint(a, 10, 64)
			nb, eb := strconv.ParseUint(b, 10, 64)
			if ea == nil && eb == nil {
				return cmpUint(na, nb)
			}
			return strings.Compare(a, b)
		})
		out := make([]json.RawMessage, 0, len(keys))
		for _, k := range keys {
			out = append(out, obj[k])
		}
		return out, nil
	}
	var items []json.RawMessage
	if err := json.Unmarshal(raw, &items); err != nil {
		return nil, fmt.Errorf("want a list, got %s", jsonType(raw))
	}
	return items, nil
}

func cmpUint(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// scalar renders a string, number or boolean as a string; null, objects and
// arrays give false. Numbers keep their decimal form ("1", "2.50"); an
// exponent is expanded; true is "1" and false "" as PHP prints them.
func scalar(raw json.RawMessage) (string, bool) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 {
		return "", false
	}
	switch raw[0] {
	case '"':
		var s string
		if json.Unmarshal(raw, &s) != nil {
			return "", false
		}
		return s, true
	case 't':
		return "1", bytes.Equal(raw, []byte("true"))
	case 'f':
		return "", bytes.Equal(raw, []byte("false"))
	case '-', '0', '1', '2', '3', '4', '5', '6', '7', '8', '9':
		var n json.Number
		if json.Unmarshal(raw, &n) != nil {
			return "", false
		}
		s := n.String()
		if strings.ContainsAny(s, "eE") {
			f, err := n.Float64()
			if err != nil {
				return "", false
			}
			s = strconv.FormatFloat(f, 'f', -1, 64)
		}
		return s, true
	}
	return "", false
}

// fieldValue is a custom field's value: a scalar, or a list of scalars
// joined with ", " as FunnelKit joins checkbox values.
func fieldValue(raw json.RawMessage) (string, bool) {
	if s, ok := scalar(raw); ok {
		return s, true
	}
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || raw[0] != '[' {
		return "", false
	}
	var items []json.RawMessage
	if json.Unmarshal(raw, &items) != nil {
		return "", false
	}
	parts := make([]string, 0, len(items))
	for _, it := range items {
		if s, ok := scalar(it); ok && s != "" {
			parts = append(parts, s)
		}
	}
	return strings.Join(parts, ", "), true
}

// uintValue reads a positive whole number given as a number or a numeric string.
func uintValue(raw json.RawMessage) (uint64, bool) {
	s, ok := scalar(raw)
	if !ok {
		return 0, false
	}
	raw = bytes.TrimSpace(raw)
	if raw[0] == 't' || raw[0] == 'f' {
		return 0, false
	}
	n, err := strconv.ParseUint(strings.TrimSpace(s), 10, 64)
	return n, err == nil
}

// stringValue is scalar without the flag.
func stringValue(raw json.RawMessage) string {
	s, _ := scalar(raw)
	return s
}

func isNull(raw json.RawMessage) bool {
	raw = bytes.TrimSpace(raw)
	return len(raw) == 0 || bytes.Equal(raw, []byte("null"))
}

func jsonType(raw json.RawMessage) string {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 {
		return "nothing"
	}
	switch raw[0] {
	case '{':
		return "an object"
	case '[':
		return "a list"
	case '"':
		return "a string"
	case 'n':
		return "null"
	case 't', 'f':
		return "a boolean"
	}
	return "a number"
}
