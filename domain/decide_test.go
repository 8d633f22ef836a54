package domain_test

import (
	"errors"
	"reflect"
	"testing"
	"time"

	"github.com/usersync/usersync/domain"
)

var t0 = time.Date(2026, 1, 2, 10, 0, 0, 0, time.UTC)

func policy() domain.Policy {
	return domain.Policy{
		DefaultRole:  "subscriber",
		AllowedRoles: []domain.Role{"subscriber", "customer", domain.Administrator},
		FieldMap:     domain.DefaultFieldMap(),
	}
}

// given builds a contact state from events, as the store would replay them.
func given(id domain.ContactID, events ...domain.Event) *domain.ContactState {
	s := domain.NewContactState(id)
	for i, e := range events {
		s.Apply(domain.Envelope{Event: e, OccurredAt: t0.Add(time.Duration(i) * time.Minute)})
		s.Version = uint64(i + 1)
	}
	return s
}

func created(id domain.ContactID, email string, tags ...domain.Tag) []domain.Event {
	ev := []domain.Event{domain.UserCreated{UserID: "u-" + id.String(), ContactID: id, Login: email, Email: email, Role: "subscriber", PasswordHash: "$2a$hash"}}
	if len(tags) > 0 {
		ev = append(ev, domain.TagsUpdated{Tags: tags, Added: tags})
	}
	return ev
}

var (
	vip   = domain.Tag{ID: 5, Name: "VIP"}
	trial = domain.Tag{ID: 7, Name: "Trial"}
	gold  = domain.Tag{ID: 9, Name: "Gold"}
)

func TestDecideTags_ReplacesTheSetNeverMerges(t *testing.T) {
	// Given a user tagged VIP and Trial
	s := given(12, created(12, "ann@example.com", vip, trial)...)
	// When the CRM says the contact has Trial and Gold
	got := domain.DecideTags(s.User, []domain.Tag{gold, trial})
	// Then the new set is exactly Trial and Gold: VIP removed, Gold added
	want := []domain.Event{domain.TagsUpdated{
		Tags: []domain.Tag{trial, gold}, Added: []domain.Tag{gold}, Removed: []domain.Tag{vip},
	}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %+v\nwant %+v", got, want)
	}
	s.Apply(domain.Envelope{Event: got[0]})
	if !reflect.DeepEqual(s.User.Tags, []domain.Tag{trial, gold}) {
		t.Fatalf("user tags after apply: %+v", s.User.Tags)
	}
}

func TestDecideTags(t *testing.T) {
	tests := []struct {
		name string
		have []domain.Tag
		crm  []domain.Tag
		want []domain.Event
	}{
		{"same set in another order is no change", []domain.Tag{vip, trial}, []domain.Tag{trial, vip}, nil},
		{"empty to empty is no change", nil, nil, nil},
		{"all removed gives an empty set", []domain.Tag{vip}, nil,
			[]domain.Event{domain.TagsUpdated{Tags: []domain.Tag{}, Removed: []domain.Tag{vip}}}},
		{"repeated ids count once", nil, []domain.Tag{vip, vip},
			[]domain.Event{domain.TagsUpdated{Tags: []domain.Tag{vip}, Added: []domain.Tag{vip}}}},
		{"renamed tag is recorded, neither added nor removed", []domain.Tag{vip}, []domain.Tag{{ID: 5, Name: "V.I.P."}},
			[]domain.Event{domain.TagsUpdated{Tags: []domain.Tag{{ID: 5, Name: "V.I.P."}}}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := domain.DecideTags(&domain.User{Tags: tt.have}, tt.crm)
			if !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("got %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

func TestPlanAdd_ExistingContact_BehavesAsUpdate(t *testing.T) {
	// Given contact 12 already has a user
	s := given(12, created(12, "ann@example.com")...)
	// When an add webhook arrives for it
	plan, err := domain.PlanAdd(s, domain.CRMContact{ID: 12, Email: "ann@example.com"}, s.User)
	// Then no user is created: it is an update
	if err != nil || plan != domain.AddAsUpdate {
		t.Fatalf("plan %v, err %v; want AddAsUpdate", plan, err)
	}
}

func TestPlanAdd_ExistingEmail_LinksContactInsteadOfDuplicating(t *testing.T) {
	// Given contact 5 has a user with ann@example.com
	owner := given(5, created(5, "ann@example.com", vip)...).User
	// When contact 12, new, carries the same address (in another case)
	s := given(12)
	c := domain.CRMContact{ID: 12, Email: "Ann@Example.com"}
	plan, err := domain.PlanAdd(s, c, owner)
	// Then the existing user is linked to contact 12, not duplicated
	if err != nil || plan != domain.AddLink {
		t.Fatalf("plan %v, err %v; want AddLink", plan, err)
	}
	linked, unlinked := domain.DecideLink(owner, c)
	s.Apply(domain.Envelope{Event: linked, OccurredAt: t0})
	if s.User.UserID != "u-5" || s.User.ContactID != 12 || !reflect.DeepEqual(s.User.Tags, []domain.Tag{vip}) {
		t.Fatalf("linked user %+v", s.User)
	}
	old := given(5, append(created(5, "ann@example.com"), unlinked)...)
	if old.User != nil {
		t.Fatalf("old contact keeps user %+v after unlink", old.User)
	}
}

func TestPlanAdd_OwnFormerUserLeftOnNoContact_LinksItBack(t *testing.T) {
	// Given contact 12's user moved to contact 5, and 5 gave it back at
	// the same time as it took it (two nodes), so no contact has it
	s := given(12, append(created(12, "ann@example.com"), domain.UserUnlinked{UserID: "u-12", ToContactID: 5})...)
	// When an add arrives for contact 12 and its address's holder is its
	// former user
	plan, err := domain.PlanAdd(s, domain.CRMContact{ID: 12, Email: "ann@example.com"}, s.Former)
	// Then that user is linked back, not a second one created
	if err != nil || plan != domain.AddLink {
		t.Fatalf("plan %v, err %v; want AddLink", plan, err)
	}
	if s.MovedTo != 5 || s.Former == nil || s.Former.UserID != "u-12" {
		t.Fatalf("state after the unlink: moved to %d, former %+v", s.MovedTo, s.Former)
	}
}

func TestPlanAdd(t *testing.T) {
	tests := []struct {
		name    string
		email   string
		owner   *domain.User
		want    domain.AddPlan
		wantErr error
	}{
		{"new contact, free email creates", "ann@example.com", nil, domain.AddCreate, nil},
		{"email given as %40 creates", "ann%40example.com", nil, domain.AddCreate, nil},
		{"no email fails", "  ", nil, 0, domain.ErrNoEmail},
		{"garbage email fails", "not-an-address", nil, 0, domain.ErrInvalidEmail},
		{"own reservation (retry after a crash) creates", "ann@example.com", &domain.User{ContactID: 12}, domain.AddCreate, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := domain.PlanAdd(given(12), domain.CRMContact{ID: 12, Email: tt.email}, tt.owner)
			if !errors.Is(err, tt.wantErr) || got != tt.want {
				t.Fatalf("got %v, %v; want %v, %v", got, err, tt.want, tt.wantErr)
			}
		})
	}
}

func TestDecideCreate_AdministratorNeverGranted(t *testing.T) {
	// Given a policy that even lists administrator as allowed
	p := policy()
	// When an add webhook asks for administrator
	events, note := domain.DecideCreate(p, domain.CRMContact{ID: 12, Email: "ann@example.com"},
		domain.NewUser{UserID: "u1", Login: "ann@example.com", RequestedRole: "Administrator"})
	// Then the user gets the default role, and the note says why
	uc := events[0].(domain.UserCreated)
	if uc.Role != "subscriber" {
		t.Fatalf("role %q, want subscriber", uc.Role)
	}
	if note == "" {
		t.Fatal("no note says administrator was refused")
	}
}

func TestDecideRole_AdministratorNeverGrantedOnUpdate(t *testing.T) {
	s := given(12, created(12, "ann@example.com")...)
	for _, asked := range []string{"administrator", "ADMINISTRATOR", " administrator "} {
		events, note := domain.DecideRole(policy(), s.User, asked)
		if len(events) != 0 || note == "" {
			t.Fatalf("asked %q: events %+v, note %q; want none and a note", asked, events, note)
		}
	}
}

func TestDecideRole(t *testing.T) {
	s := given(12, created(12, "ann@example.com")...)
	tests := []struct {
		asked    string
		want     []domain.Event
		wantNote bool
	}{
		{"", nil, false},
		{"subscriber", nil, false},
		{"customer", []domain.Event{domain.RoleChanged{Old: "subscriber", New: "customer"}}, false},
		{"editor", nil, true},
	}
	for _, tt := range tests {
		t.Run(tt.asked, func(t *testing.T) {
			got, note := domain.DecideRole(policy(), s.User, tt.asked)
			if !reflect.DeepEqual(got, tt.want) || (note != "") != tt.wantNote {
				t.Fatalf("got %+v note %q", got, note)
			}
		})
	}
}

func TestDecideCreate_PullsTagsAndMeta(t *testing.T) {
	c := domain.CRMContact{ID: 12, Email: "ann@example.com", Tags: []domain.Tag{trial, vip},
		Fields: map[string]string{"f_name": "Ann", "l_name": "Lee", "country": "US", "7": "gold"}}
	p := policy()
	p.FieldMap["membership"] = "7"
	events, note := domain.DecideCreate(p, c, domain.NewUser{UserID: "u1", Login: "ann@example.com", RequestedRole: "customer"})
	if note != "" {
		t.Fatalf("note %q", note)
	}
	s := given(12, events...)
	want := map[string]string{"first_name": "Ann", "last_name": "Lee", "billing_country": "US", "membership": "gold"}
	if !reflect.DeepEqual(s.User.Meta, want) || s.User.Role != "customer" || !reflect.DeepEqual(s.User.Tags, []domain.Tag{vip, trial}) {
		t.Fatalf("user %+v", s.User)
	}
}

func TestUpdateMeta_RepeatChangesNothing(t *testing.T) {
	c := domain.CRMContact{ID: 12, Email: "ann@example.com", Fields: map[string]string{"f_name": "Ann", "l_name": "Lee"}}
	p := policy()
	s := given(12, created(12, "ann@example.com")...)
	first := p.UpdateMeta(s.User, c)
	if len(first) != 1 {
		t.Fatalf("first pull: %+v", first)
	}
	s.Apply(domain.Envelope{Event: first[0]})
	if again := p.UpdateMeta(s.User, c); again != nil {
		t.Fatalf("repeat pull appended %+v", again)
	}
	// A field emptied in the CRM clears the meta key.
	c.Fields["l_name"] = ""
	got := p.UpdateMeta(s.User, c)
	want := []domain.Event{domain.MetaPulled{Changes: []domain.MetaChange{{Key: "last_name", Old: "Lee", New: ""}}}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %+v want %+v", got, want)
	}
}

func TestDecideEmail(t *testing.T) {
	u := given(12, created(12, "ann@example.com")...).User
	tests := []struct {
		name     string
		email    string
		free     bool
		changes  bool
		wantNote bool
	}{
		{"same address", "ann@example.com", false, false, false},
		{"same address other case is recorded", "Ann@example.com", false, true, false},
		{"new free address", "ann@new.example", true, true, false},
		{"new address held by another user", "bob@example.com", false, false, true},
		{"garbage", "nope", true, false, true},
		{"empty keeps the old one", "", true, false, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			events, note := domain.DecideEmail(u, tt.email, tt.free)
			if (len(events) > 0) != tt.changes || (note != "") != tt.wantNote {
				t.Fatalf("events %+v note %q", events, note)
			}
		})
	}
}

func TestPolicyValidate(t *testing.T) {
	bad := []domain.Policy{
		{DefaultRole: ""},
		{DefaultRole: domain.Administrator},
		{DefaultRole: "subscriber", FieldMap: map[string]string{"x": ""}},
	}
	for _, p := range bad {
		if p.Validate() == nil {
			t.Errorf("policy %+v validated", p)
		}
	}
	if err := policy().Validate(); err != nil {
		t.Fatal(err)
	}
}

func TestParseContactID(t *testing.T) {
	for _, ok := range []string{"1", "12", " 42 ", "18446744073709551615"} {
		if _, err := domain.ParseContactID(ok); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
	for _, bad := range []string{"", "0", "-1", "+5", "1.5", "abc", "12abc", "18446744073709551616", "1/../2"} {
		if _, err := domain.ParseContactID(bad); !errors.Is(err, domain.ErrInvalidContactID) {
			t.Errorf("%q: err %v", bad, err)
		}
	}
}

func TestCleanFieldValue(t *testing.T) {
	if got := domain.CleanFieldValue(" line one<br />\nline two<br>three "); got != "line one\nline two\nthree" {
		t.Fatalf("got %q", got)
	}
}

func TestMetaFrom_NeverCopiesThePasswordField(t *testing.T) {
	// Given a policy that returns passwords to field 7 and (wrongly) maps it
	p := policy()
	p.PasswordField = "7"
	p.FieldMap["membership"] = "7"
	// Then the policy is refused at start-up
	if err := p.Validate(); err == nil {
		t.Fatal("a field map reading the password field validated")
	}
	// And even so, the returned password never reaches meta
	c := domain.CRMContact{ID: 12, Email: "ann@example.com", Fields: map[string]string{"7": "the-returned-password"}}
	if v, ok := p.MetaFrom(c)["membership"]; ok {
		t.Fatalf("meta got %q from the password field", v)
	}
	u := &domain.User{Meta: map[string]string{"membership": "gold"}}
	if ev := p.UpdateMeta(u, c); ev != nil {
		t.Fatalf("update pulled %+v", ev)
	}
}
