package domain_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/usersync/usersync/domain"
)

func TestStreamNames(t *testing.T) {
	tests := []struct {
		name string
		got  string
		want string
	}{
		{"Contact", domain.ContactID(42).Stream(), "contact-42"},
		{"ContactMaxID", domain.ContactID(18446744073709551615).Stream(), "contact-18446744073709551615"},
		{"Webhook", domain.WebhookStream("01JH3K"), "webhook-01JH3K"},
		{"Email_IsTheLowerCaseAddress", domain.EmailStream("Ann@Example.COM"), "email-ann@example.com"},
		{"Email_AsFunnelKitRendersIt", domain.EmailStream(" ann%40example.com "), "email-ann@example.com"},
		{"Login_IsTrimmedAndLowerCase", domain.LoginStream(" Ann.Lee "), "login-ann.lee"},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("%s: got %q, want %q", tt.name, tt.got, tt.want)
		}
	}
}

func TestReservationStreams_SameAddressOrLogin_SameStream(t *testing.T) {
	if a, b := domain.EmailStream("ANN@example.com"), domain.EmailStream(" ann%40EXAMPLE.com"); a != b {
		t.Errorf("one address, two reservation streams: %q, %q", a, b)
	}
	if a, b := domain.LoginStream("Ann"), domain.LoginStream("ann "); a != b {
		t.Errorf("one login, two reservation streams: %q, %q", a, b)
	}
}

func TestContactIDFromStream_IsTheInverseOfStream(t *testing.T) {
	for _, id := range []domain.ContactID{1, 12, 1000000, 18446744073709551615} {
		got, ok := domain.ContactIDFromStream(id.Stream())
		if !ok || got != id {
			t.Errorf("ContactIDFromStream(%q) = %d, %v; want %d, true", id.Stream(), got, ok, id)
		}
	}
}

func TestContactIDFromStream_OtherStreams_AreNotContacts(t *testing.T) {
	for _, stream := range []string{
		"", "contact-", "contact-0", "contact--1", "contact-+1", "contact-abc", "contact-12x",
		"Contact-12", "contacts-12", "contact12", "webhook-12", "email-12", "login-12",
		"email-contact-12@example.com", "contact-18446744073709551616",
	} {
		if id, ok := domain.ContactIDFromStream(stream); ok {
			t.Errorf("ContactIDFromStream(%q) = %d, true; want not a contact stream", stream, id)
		}
	}
}

func TestContactID_String_IsDecimal(t *testing.T) {
	if got := domain.ContactID(907).String(); got != "907" {
		t.Fatalf("got %q", got)
	}
}

func TestParseContactID_Edges(t *testing.T) {
	accepted := []struct {
		in   string
		want domain.ContactID
	}{
		{"\t9\n", 9},
		{"007", 7}, // leading zeros are read as decimal, not octal
	}
	for _, tt := range accepted {
		if got, err := domain.ParseContactID(tt.in); err != nil || got != tt.want {
			t.Errorf("ParseContactID(%q) = %d, %v; want %d", tt.in, got, err, tt.want)
		}
	}
	for _, bad := range []string{" ", "00", "0x10", "1_000", "1e3", "12 34", "٣", "１２"} {
		got, err := domain.ParseContactID(bad)
		if !errors.Is(err, domain.ErrInvalidContactID) || got != 0 {
			t.Errorf("ParseContactID(%q) = %d, %v; want 0 and ErrInvalidContactID", bad, got, err)
		}
	}
}

func TestParseContactID_ErrorQuotesTheInputCut(t *testing.T) {
	_, err := domain.ParseContactID("abc")
	if err == nil || err.Error() != `contact_id must be a positive integer, got "abc"` {
		t.Errorf("error %v", err)
	}
	long := strings.Repeat("9", 30) + strings.Repeat("x", 100)
	_, err = domain.ParseContactID(long)
	if err == nil || strings.Contains(err.Error(), long) || !strings.Contains(err.Error(), long[:40]+"…") {
		t.Errorf("error %v: want the input cut after 40 bytes", err)
	}
}

func TestNormalizeEmail(t *testing.T) {
	tests := []struct{ in, want string }{
		{"ann@example.com", "ann@example.com"},
		{" ann@example.com\t\n", "ann@example.com"},
		{"Ann@Example.COM", "Ann@Example.COM"}, // the case is kept; EmailKey folds it
		{"ann%40example.com", "ann@example.com"},
		{"Ann%40Example.com", "Ann@Example.com"},
		{"%20ann%40example.com%20", "ann@example.com"},
		{"ann%2Bnews%40example.com", "ann+news@example.com"},
		{"ann+news@example.com", "ann+news@example.com"},   // no escape, no change
		{"ann+news%40example.com", "ann+news@example.com"}, // + is not a space, even beside an escape
		{"100%@example.com", "100%@example.com"},           // not an escape: kept as written
		{"", ""},
	}
	for _, tt := range tests {
		if got := domain.NormalizeEmail(tt.in); got != tt.want {
			t.Errorf("NormalizeEmail(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestEmailKey_SameUserSameKey(t *testing.T) {
	same := []string{"ann@example.com", "ANN@EXAMPLE.COM", " Ann@Example.com ", "ann%40example.com", "Ann%40EXAMPLE.com"}
	for _, e := range same {
		if got := domain.EmailKey(e); got != "ann@example.com" {
			t.Errorf("EmailKey(%q) = %q, want ann@example.com", e, got)
		}
	}
	if domain.EmailKey("ann@example.com") == domain.EmailKey("anne@example.com") {
		t.Error("two addresses share a key")
	}
}

func TestValidEmail(t *testing.T) {
	tests := []struct {
		email string
		want  bool
	}{
		{"ann@example.com", true},
		{"ann.lee+news@mail.example.co.uk", true},
		{"a@b.c", true},
		{"ANN@EXAMPLE.COM", true},
		{"", false},
		{"ann", false},
		{"ann@", false},
		{"@example.com", false},
		{"ann@localhost", false},
		{"ann@@example.com", false},
		{"ann@ex@ample.com", false},
		{"ann @example.com", false},
		{"ann@example.com ", false},
		{"ann@exa\tmple.com", false},
		{"ann@example.com\r\n", false},
		{"<ann@example.com>", false},
		{"Ann <ann@example.com>", false},
		{"ann@example.com,bob@example.com", false},
		{"ann@example.com;", false},
		{"ann%40example.com", false}, // callers normalize first
	}
	for _, tt := range tests {
		if got := domain.ValidEmail(tt.email); got != tt.want {
			t.Errorf("ValidEmail(%q) = %v, want %v", tt.email, got, tt.want)
		}
	}
}

func TestSortTags_OrdersByIDAndDropsRepeatedIDs_FirstNameWins(t *testing.T) {
	in := []domain.Tag{{ID: 9, Name: "Gold"}, {ID: 5, Name: "VIP"}, {ID: 9, Name: "Gold (renamed)"}, {ID: 7, Name: "Trial"}}
	got := domain.SortTags(in)
	want := []domain.Tag{{ID: 5, Name: "VIP"}, {ID: 7, Name: "Trial"}, {ID: 9, Name: "Gold"}}
	if len(got) != len(want) {
		t.Fatalf("got %+v, want %+v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("got %+v, want %+v", got, want)
		}
	}
	if in[0].ID != 9 || in[2].Name != "Gold (renamed)" {
		t.Fatalf("SortTags changed its input: %+v", in)
	}
}
