package main

import (
	"io"
	"strings"
	"testing"
)

func TestParseMix(t *testing.T) {
	tests := []struct {
		in      string
		want    string // String() of the result
		wantErr string
	}{
		{in: "add=10,update=40,update_tags=50", want: "add=10,update=40,update_tags=50"},
		{in: " Update_Tags = 1 ", want: "update_tags=1"},
		{in: "add=0,update=2.5", want: "update=2.5"},
		{in: "", wantErr: "empty mix"},
		{in: "add", wantErr: `mix entry "add": want action=weight`},
		{in: "delete=5", wantErr: `unknown action "delete" (want add, update or update_tags)`},
		{in: "add=x", wantErr: `mix entry "add=x": the weight must be a number, 0 or more`},
		{in: "add=-1", wantErr: "the weight must be a number, 0 or more"},
		{in: "add=1,add=2", wantErr: "add is given twice"},
		{in: "add=0,update=0", wantErr: "every weight is 0"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			m, err := parseMix(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("parseMix(%q) error = %v, want one saying %q", tt.in, err, tt.wantErr)
				}
				return
			}
			if err != nil || m.String() != tt.want {
				t.Fatalf("parseMix(%q) = %q, %v; want %q", tt.in, m.String(), err, tt.want)
			}
		})
	}
}

func TestParseSkew(t *testing.T) {
	tests := []struct {
		in, want, wantErr string
	}{
		{in: "uniform", want: "uniform"},
		{in: "seq", want: "seq"},
		{in: "zipf=1.2", want: "zipf=1.2"},
		{in: "hot=0.01/0.5", want: "hot=0.01/0.5"},
		{in: "zipf=1", wantErr: "an exponent above 1"},
		{in: "zipf", wantErr: "an exponent above 1"},
		{in: "hot=0.5", wantErr: "hot=F/S needs"},
		{in: "hot=2/0.5", wantErr: "both between 0 and 1"},
		{in: "seq=3", wantErr: "takes no value"},
		{in: "pareto", wantErr: "want uniform, seq, zipf=S or hot=F/S"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			s, err := parseSkew(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("parseSkew(%q) error = %v, want one saying %q", tt.in, err, tt.wantErr)
				}
				return
			}
			if err != nil || s.String() != tt.want {
				t.Fatalf("parseSkew(%q) = %q, %v; want %q", tt.in, s.String(), err, tt.want)
			}
		})
	}
}

func TestParseLoad(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		wantErr string
	}{
		{"loopback target", []string{"--target", "http://127.0.0.1:8080", "--access-key", "k"}, ""},
		{"localhost target", []string{"--target", "http://localhost:8080", "--access-key", "k"}, ""},
		{"IPv6 loopback", []string{"--target", "http://[::1]:8080", "--access-key", "k"}, ""},
		{"remote target refused", []string{"--target", "http://192.0.2.10:8080", "--access-key", "k"}, "is not a loopback address"},
		{"remote name refused", []string{"--target", "https://shop.example.com", "--access-key", "k"}, "--allow-remote"},
		{"remote allowed", []string{"--target", "http://192.0.2.10:8080", "--access-key", "k", "--allow-remote"}, ""},
		{"no target", []string{"--access-key", "k"}, "--target is required"},
		{"no access key", []string{"--target", "http://127.0.0.1:1"}, "--access-key is required"},
		{"serve and target", []string{"--serve", "usersync", "--target", "http://127.0.0.1:1"}, "leave --target out"},
		{"serve flags without serve", []string{"--target", "http://127.0.0.1:1", "--access-key", "k", "--serve-data", "d"}, "need --serve"},
		{"bad mix", []string{"--serve", "u", "--mix", "add=1,tag=2"}, ""},
		{"bad method", []string{"--serve", "u", "--method", "put"}, "--method \"put\""},
		{"rate with /s", []string{"--serve", "u", "--rate", "500/s"}, ""},
		{"remote simulator", []string{"--serve", "u", "--simulator-addr", "0.0.0.0:9000"}, "must be a loopback host:port"},
		{"no connections", []string{"--serve", "u", "--connections", "0"}, "--connections 0"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := parseLoad(tt.args, io.Discard)
			if tt.name == "bad mix" {
				// A flag's own error is printed by the flag package.
				if err != errUsage {
					t.Fatalf("err = %v, want the usage error", err)
				}
				return
			}
			if tt.wantErr == "" && err != nil {
				t.Fatalf("parseLoad(%q) = %v, want no error", tt.args, err)
			}
			if tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
				t.Fatalf("parseLoad(%q) = %v, want an error saying %q", tt.args, err, tt.wantErr)
			}
		})
	}
}

func TestParseLoad_Bounds_DefaultToTenSecondsOrTenMinutesWithRequests(t *testing.T) {
	c, err := parseLoad([]string{"--serve", "u"}, io.Discard)
	if err != nil || c.Duration != defaultDuration || c.Requests != 0 {
		t.Fatalf("no bound given: %v, %d, %v; want %v", c.Duration, c.Requests, err, defaultDuration)
	}
	c, err = parseLoad([]string{"--serve", "u", "--requests", "5", "--rate", "20"}, io.Discard)
	if err != nil || c.Duration != maxDurationWithRequests || c.Requests != 5 || c.Rate != 20 {
		t.Fatalf("--requests 5: %v, %d, %v, %v", c.Duration, c.Requests, c.Rate, err)
	}
}
