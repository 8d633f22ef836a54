package domain_test

import (
	"testing"

	"github.com/usersync/usersync/domain"
)

// BenchmarkDecide measures the pure decisions a webhook runs once its
// contact is loaded and read from FunnelKit: an update_tags (DecideTags)
// and an update (the fields, the email, the role and the tags), on a user
// with a realistic set of fields and tags. Regressions in the rules show
// here without a store or a network.
func BenchmarkDecide(b *testing.B) {
	p := policy()
	tags := []domain.Tag{vip, trial, gold, {ID: 11, Name: "Newsletter"}, {ID: 12, Name: "Customer"}}
	s := given(12, created(12, "ann@example.com", tags[:3]...)...)
	crm := domain.CRMContact{ID: 12, Email: "ann@example.com", Tags: tags[1:],
		Fields: map[string]string{"f_name": "Ann", "l_name": "Lee", "contact_no": "+15550100", "city": "Oslo<br />North"}}
	b.Run("update_tags", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if ev := domain.DecideTags(s.User, crm.Tags); len(ev) != 1 {
				b.Fatalf("DecideTags: %d events, want 1", len(ev))
			}
		}
	})
	b.Run("update", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			n := len(p.UpdateMeta(s.User, crm))
			ev, _ := domain.DecideEmail(s.User, crm.Email, true)
			n += len(ev)
			ev, _ = domain.DecideRole(p, s.User, "customer")
			n += len(ev)
			n += len(domain.DecideTags(s.User, crm.Tags))
			if n == 0 {
				b.Fatal("an update that changes the fields, the role and the tags decided nothing")
			}
		}
	})
}
