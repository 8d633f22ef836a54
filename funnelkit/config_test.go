package funnelkit_test

import (
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/usersync/usersync/funnelkit"
)

func TestNew_ValidatesTheConfig(t *testing.T) {
	good := funnelkit.Config{BaseURL: "https://shop.example.com", User: testUser, Password: testPassword}
	tests := []struct {
		name string
		mod  func(*funnelkit.Config)
		want string // "" for valid
	}{
		{"valid", func(*funnelkit.Config) {}, ""},
		{"site in a folder with a trailing slash", func(c *funnelkit.Config) { c.BaseURL = "http://127.0.0.1:8080/blog/" }, ""},
		{"older API prefix", func(c *funnelkit.Config) { c.APIPrefix = "/autonami-admin/" }, ""},
		{"empty URL", func(c *funnelkit.Config) { c.BaseURL = " " }, "--funnelkit-url is empty"},
		{"no scheme", func(c *funnelkit.Config) { c.BaseURL = "shop.example.com" }, "absolute http:// or https://"},
		{"ftp", func(c *funnelkit.Config) { c.BaseURL = "ftp://shop.example.com" }, "absolute http:// or https://"},
		{"no host", func(c *funnelkit.Config) { c.BaseURL = "https://" }, "no host name"},
		{"not a URL", func(c *funnelkit.Config) { c.BaseURL = "https://shop example.com" }, "not a valid URL"},
		{"not a URL, with credentials", func(c *funnelkit.Config) { c.BaseURL = "https://bot:" + testPassword + "@shop.example.com" }, "not a valid URL"},
		{"credentials in the URL", func(c *funnelkit.Config) {
			c.BaseURL = "https://bot:" + url.QueryEscape(testPassword) + "@shop.example.com"
		}, "--funnelkit-user and --funnelkit-password"},
		{"query", func(c *funnelkit.Config) { c.BaseURL = "https://shop.example.com/?rest_route=/" }, "must not have a query"},
		{"fragment", func(c *funnelkit.Config) { c.BaseURL = "https://shop.example.com/#x" }, "must not have a query or fragment"},
		{"wp-json path", func(c *funnelkit.Config) { c.BaseURL = "https://shop.example.com/wp-json/autonami-app" }, "without /wp-json"},
		{"no user", func(c *funnelkit.Config) { c.User = "" }, "--funnelkit-user is empty"},
		{"colon in user", func(c *funnelkit.Config) { c.User = "a:b" }, "--funnelkit-user must not contain ':'"},
		{"no password", func(c *funnelkit.Config) { c.Password = "" }, "--funnelkit-password is empty"},
		{"newline in password", func(c *funnelkit.Config) { c.Password = testPassword + "\n" }, "control character"},
		{"negative timeout", func(c *funnelkit.Config) { c.Timeout = -time.Second }, "negative"},
		{"bad prefix", func(c *funnelkit.Config) { c.APIPrefix = "autonami app" }, "API prefix"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := good
			tt.mod(&cfg)
			c, err := funnelkit.New(cfg)
			if tt.want == "" {
				if err != nil || c == nil {
					t.Fatalf("New = %v, %v", c, err)
				}
				return
			}
			if err == nil {
				t.Fatalf("New accepted %s", cfg)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q lacks %q", err, tt.want)
			}
			assertNoSecret(t, "config error", err.Error())
		})
	}
}

func TestNew_Defaults(t *testing.T) {
	c, err := funnelkit.New(funnelkit.Config{BaseURL: "https://shop.example.com/", User: "u", Password: "p w"})
	if err != nil {
		t.Fatal(err)
	}
	s := c.String()
	for _, want := range []string{`"https://shop.example.com"`, `"autonami-app"`, "15s"} {
		if !strings.Contains(s, want) {
			t.Errorf("%s lacks %s", s, want)
		}
	}
}
