package domain_test

import (
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/usersync/usersync/domain"
)

func fieldMap(extra map[string]string) map[string]string {
	m := domain.DefaultFieldMap()
	for k, v := range extra {
		m[k] = v
	}
	return m
}

func TestPolicy_LoginFor(t *testing.T) {
	contact := func(email string, fields map[string]string) domain.CRMContact {
		return domain.CRMContact{ID: 12, Email: email, Fields: fields}
	}
	tests := []struct {
		name     string
		fieldMap map[string]string
		contact  domain.CRMContact
		want     string
	}{
		{
			name:     "NoLoginField_IsTheEmail",
			fieldMap: domain.DefaultFieldMap(),
			contact:  contact("ann@example.com", map[string]string{"f_name": "Ann"}),
			want:     "ann@example.com",
		},
		{
			name:     "NoLoginField_IsTheNormalizedEmailWithItsCase",
			fieldMap: domain.DefaultFieldMap(),
			contact:  contact(" Ann%40Example.com ", nil),
			want:     "Ann@Example.com",
		},
		{
			name:     "MappedLoginField_IsItsValue",
			fieldMap: fieldMap(map[string]string{domain.MetaLogin: "14"}),
			contact:  contact("ann@example.com", map[string]string{"14": "annlee"}),
			want:     "annlee",
		},
		{
			name:     "MappedLoginField_IsCleaned",
			fieldMap: fieldMap(map[string]string{domain.MetaLogin: "14"}),
			contact:  contact("ann@example.com", map[string]string{"14": "  annlee<br />"}),
			want:     "annlee",
		},
		{
			name:     "MappedLoginFieldEmpty_IsTheEmail",
			fieldMap: fieldMap(map[string]string{domain.MetaLogin: "14"}),
			contact:  contact("ann@example.com", map[string]string{"14": "   "}),
			want:     "ann@example.com",
		},
		{
			name:     "MappedLoginFieldMissing_IsTheEmail",
			fieldMap: fieldMap(map[string]string{domain.MetaLogin: "14"}),
			contact:  contact("ann@example.com", nil),
			want:     "ann@example.com",
		},
		{
			name:     "LoginMappedToTheEmailColumn_IsTheEmail",
			fieldMap: fieldMap(map[string]string{domain.MetaLogin: "email"}),
			contact:  contact("ann@example.com", map[string]string{"email": "other@example.com"}),
			want:     "ann@example.com",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := domain.Policy{DefaultRole: "subscriber", FieldMap: tt.fieldMap}
			if got := p.LoginFor(tt.contact); got != tt.want {
				t.Fatalf("LoginFor = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestPolicy_PasswordFrom(t *testing.T) {
	tests := []struct {
		name     string
		fieldMap map[string]string
		fields   map[string]string
		want     string
		wantOK   bool
	}{
		{"NoPasswordField_GivesNone", domain.DefaultFieldMap(), map[string]string{"15": "s3cret"}, "", false},
		{"MappedAndSet_GivesItTrimmed", fieldMap(map[string]string{domain.MetaPassword: "15"}), map[string]string{"15": "  s3cret pass \n"}, "s3cret pass", true},
		{"MappedButEmpty_GivesNone", fieldMap(map[string]string{domain.MetaPassword: "15"}), map[string]string{"15": ""}, "", false},
		{"MappedButBlank_GivesNone", fieldMap(map[string]string{domain.MetaPassword: "15"}), map[string]string{"15": " \t "}, "", false},
		{"MappedButAbsent_GivesNone", fieldMap(map[string]string{domain.MetaPassword: "15"}), nil, "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := domain.Policy{DefaultRole: "subscriber", FieldMap: tt.fieldMap}
			got, ok := p.PasswordFrom(domain.CRMContact{ID: 12, Email: "ann@example.com", Fields: tt.fields})
			if got != tt.want || ok != tt.wantOK {
				t.Fatalf("PasswordFrom = %q, %v; want %q, %v", got, ok, tt.want, tt.wantOK)
			}
		})
	}
}

var catalog = []domain.Tag{
	{ID: 5, Name: "VIP"},
	{ID: 7, Name: "Trial"},
	{ID: 9, Name: "Gold members"},
	{ID: 11, Name: "VIP"}, // names need not be unique
}

func TestResolveTags(t *testing.T) {
	tests := []struct {
		name    string
		entries []string
		want    []domain.Tag
	}{
		{"None", nil, nil},
		{"ByID", []string{"7", "5"}, []domain.Tag{{ID: 7, Name: "Trial"}, {ID: 5, Name: "VIP"}}},
		{"ByID_LeadingZeros", []string{"007"}, []domain.Tag{{ID: 7, Name: "Trial"}}},
		{"ByExactName", []string{"Gold members", "Trial"}, []domain.Tag{{ID: 9, Name: "Gold members"}, {ID: 7, Name: "Trial"}}},
		{"ByRepeatedName_TheFirstInTheCatalog", []string{"VIP"}, []domain.Tag{{ID: 5, Name: "VIP"}}},
		{"ByIDOfARepeatedName", []string{"11"}, []domain.Tag{{ID: 11, Name: "VIP"}}},
		{"IDsAndNamesMixed_InEntryOrder", []string{"9", "Trial", "11"}, []domain.Tag{{ID: 9, Name: "Gold members"}, {ID: 7, Name: "Trial"}, {ID: 11, Name: "VIP"}}},
		{"RepeatedEntries_AreKept_DecideTagsDropsThem", []string{"5", "VIP"}, []domain.Tag{{ID: 5, Name: "VIP"}, {ID: 5, Name: "VIP"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := domain.ResolveTags(tt.entries, catalog)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestResolveTags_AnEntryMatchingNoTag_IsAnInvalidRequestNamingIt(t *testing.T) {
	tests := []struct {
		name    string
		entries []string
		wantMsg string
	}{
		{"UnknownID", []string{"5", "42"}, "tags: no FunnelKit tag has id 42"},
		{"UnknownName", []string{"Platinum", "5"}, `tags: no FunnelKit tag is named "Platinum" (use tag ids or exact names)`},
		{"NamesAreCaseSensitive", []string{"vip"}, `no FunnelKit tag is named "vip"`},
		{"NamesAreNotTrimmed", []string{" Trial"}, `no FunnelKit tag is named " Trial"`},
		{"NegativeNumber_IsAName", []string{"-5"}, `no FunnelKit tag is named "-5"`},
		{"LongName_IsCut", []string{strings.Repeat("n", 200)}, `"` + strings.Repeat("n", 60) + `…"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := domain.ResolveTags(tt.entries, catalog)
			if got != nil {
				t.Errorf("tags %+v returned with the error", got)
			}
			if !errors.Is(err, domain.ErrInvalidRequest) {
				t.Fatalf("err %v, want one matching ErrInvalidRequest", err)
			}
			if !strings.Contains(err.Error(), tt.wantMsg) {
				t.Errorf("error %q, want it to contain %q", err, tt.wantMsg)
			}
			var f *domain.Failure
			if !errors.As(err, &f) || f.Reason != err.Error() {
				t.Errorf("not a Failure whose reason is the message: %#v", err)
			}
		})
	}
}

func TestResolveTags_EmptyCatalog_RefusesEveryEntry(t *testing.T) {
	if _, err := domain.ResolveTags([]string{"5"}, nil); !errors.Is(err, domain.ErrInvalidRequest) {
		t.Fatalf("err %v", err)
	}
	if got, err := domain.ResolveTags(nil, nil); got != nil || err != nil {
		t.Fatalf("no entries: %v, %v", got, err)
	}
}
