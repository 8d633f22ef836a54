package domain_test

import (
	"testing"
	"time"

	"github.com/usersync/usersync/domain"
)

func TestNextReturnStep(t *testing.T) {
	t0 := time.Date(2026, 3, 1, 9, 0, 0, 0, time.UTC)
	min := func(m int) time.Time { return t0.Add(time.Duration(m) * time.Minute) }
	const takeover = 5 * time.Minute
	pending := func(mod func(*domain.PasswordReturn)) *domain.PasswordReturn {
		p := &domain.PasswordReturn{KeyID: "k1", Field: "7", IssuedAt: t0}
		if mod != nil {
			mod(p)
		}
		return p
	}
	tests := []struct {
		name string
		// given the return, whether this node holds its key, and the time
		given   *domain.PasswordReturn
		haveKey bool
		now     time.Time
		// then
		want domain.Step
	}{
		{"no password issued: done", nil, true, min(1), domain.Step{Kind: domain.StepDone}},
		{"returned: done", pending(func(p *domain.PasswordReturn) { p.Done = true }), true, min(1), domain.Step{Kind: domain.StepDone}},
		{"returned, key not here: done", pending(func(p *domain.PasswordReturn) { p.Done = true }), false, min(99), domain.Step{Kind: domain.StepDone}},
		{"issued here, never tried: claim attempt 1", pending(nil), true, min(0), domain.Step{Kind: domain.StepClaim, Attempt: 1}},
		{"a live claim: wait for it to close or expire", pending(func(p *domain.PasswordReturn) {
			p.Claim = &domain.AttemptClaim{Attempt: 1, Until: min(2), Node: "node-a"}
		}), true, min(1), domain.Step{Kind: domain.StepWait, At: min(2)}},
		{"an expired claim: its attempt counts, claim the next", pending(func(p *domain.PasswordReturn) {
			p.Claim = &domain.AttemptClaim{Attempt: 1, Until: min(2), Node: "node-a"}
		}), true, min(2), domain.Step{Kind: domain.StepClaim, Attempt: 2}},
		{"a claim closed by a failure: wait for its retry", pending(func(p *domain.PasswordReturn) {
			p.Claim, p.Attempts, p.NextAttemptAt = &domain.AttemptClaim{Attempt: 1, Until: min(2), Node: "node-a"}, 1, min(3)
		}), true, min(1), domain.Step{Kind: domain.StepWait, At: min(3)}},
		{"the retry is due: claim the next attempt", pending(func(p *domain.PasswordReturn) {
			p.Claim, p.Attempts, p.NextAttemptAt = &domain.AttemptClaim{Attempt: 1, Until: min(2), Node: "node-a"}, 1, min(3)
		}), true, min(3), domain.Step{Kind: domain.StepClaim, Attempt: 2}},
		{"a live claim of this node's, from before a restart: taken over at once", pending(func(p *domain.PasswordReturn) {
			p.Claim = &domain.AttemptClaim{Attempt: 1, Until: min(2), Node: "node-b"}
		}), true, min(1), domain.Step{Kind: domain.StepClaim, Attempt: 2}},
		{"a live claim of no named node: waited for", pending(func(p *domain.PasswordReturn) {
			p.Claim = &domain.AttemptClaim{Attempt: 1, Until: min(2)}
		}), true, min(1), domain.Step{Kind: domain.StepWait, At: min(2)}},
		{"key not here, issued lately: wait for the take-over delay", pending(nil), false, min(1), domain.Step{Kind: domain.StepWait, At: min(5)}},
		{"key not here, issuer silent for the delay: replace", pending(nil), false, min(5), domain.Step{Kind: domain.StepReplace}},
		{"key not here, the issuer claimed: the delay counts from the claim's end", pending(func(p *domain.PasswordReturn) {
			p.Claim = &domain.AttemptClaim{Attempt: 1, Until: min(4), Node: "node-a"}
		}), false, min(6), domain.Step{Kind: domain.StepWait, At: min(9)}},
		{"key not here, a live claim: wait for the claim first", pending(func(p *domain.PasswordReturn) {
			p.Claim = &domain.AttemptClaim{Attempt: 1, Until: min(4), Node: "node-a"}
		}), false, min(1), domain.Step{Kind: domain.StepWait, At: min(4)}},
		{"key not here, the issuer's retry far ahead: the delay counts from it", pending(func(p *domain.PasswordReturn) {
			p.Claim, p.Attempts, p.NextAttemptAt = &domain.AttemptClaim{Attempt: 1, Until: min(2), Node: "node-a"}, 1, min(20)
		}), false, min(10), domain.Step{Kind: domain.StepWait, At: min(25)}},
		{"key not here, the issuer's retry missed by the delay: replace", pending(func(p *domain.PasswordReturn) {
			p.Claim, p.Attempts, p.NextAttemptAt = &domain.AttemptClaim{Attempt: 1, Until: min(2), Node: "node-a"}, 1, min(20)
		}), false, min(25), domain.Step{Kind: domain.StepReplace}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// When the node decides
			got := domain.NextReturnStep(tt.given, "node-b", tt.haveKey, tt.now, takeover)
			// Then
			if got != tt.want {
				t.Fatalf("got %v %+v, want %v %+v", got.Kind, got, tt.want.Kind, tt.want)
			}
		})
	}
}

func TestNextWelcomeStep(t *testing.T) {
	t0 := time.Date(2026, 3, 1, 9, 0, 0, 0, time.UTC)
	min := func(m int) time.Time { return t0.Add(time.Duration(m) * time.Minute) }
	mail := func(mod func(*domain.WelcomeMail)) *domain.WelcomeMail {
		w := &domain.WelcomeMail{UserID: "u-1", To: "ann@example.com", Login: "ann"}
		if mod != nil {
			mod(w)
		}
		return w
	}
	tests := []struct {
		name  string
		given *domain.WelcomeMail
		now   time.Time
		want  domain.Step
	}{
		{"no mail asked for: done", nil, min(0), domain.Step{Kind: domain.StepDone}},
		{"sent: done", mail(func(w *domain.WelcomeMail) { w.Done = true }), min(0), domain.Step{Kind: domain.StepDone}},
		{"never tried: claim attempt 1", mail(nil), min(0), domain.Step{Kind: domain.StepClaim, Attempt: 1}},
		{"a live claim (any node's): wait", mail(func(w *domain.WelcomeMail) {
			w.Claim = &domain.AttemptClaim{Attempt: 1, Until: min(2), Node: "node-a"}
		}), min(1), domain.Step{Kind: domain.StepWait, At: min(2)}},
		{"an expired claim: claim the next attempt", mail(func(w *domain.WelcomeMail) {
			w.Claim = &domain.AttemptClaim{Attempt: 1, Until: min(2), Node: "node-a"}
		}), min(3), domain.Step{Kind: domain.StepClaim, Attempt: 2}},
		{"a live claim of this node's, from before a restart: taken over at once", mail(func(w *domain.WelcomeMail) {
			w.Claim = &domain.AttemptClaim{Attempt: 1, Until: min(2), Node: "node-b"}
		}), min(1), domain.Step{Kind: domain.StepClaim, Attempt: 2}},
		{"failed, retry not due: wait", mail(func(w *domain.WelcomeMail) {
			w.Claim, w.Attempts, w.NextAttemptAt = &domain.AttemptClaim{Attempt: 1, Until: min(2), Node: "node-a"}, 1, min(4)
		}), min(1), domain.Step{Kind: domain.StepWait, At: min(4)}},
		{"failed, retry due: any node claims the next", mail(func(w *domain.WelcomeMail) {
			w.Claim, w.Attempts, w.NextAttemptAt = &domain.AttemptClaim{Attempt: 1, Until: min(2), Node: "node-a"}, 1, min(4)
		}), min(4), domain.Step{Kind: domain.StepClaim, Attempt: 2}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := domain.NextWelcomeStep(tt.given, "node-b", tt.now); got != tt.want {
				t.Fatalf("got %v %+v, want %v %+v", got.Kind, got, tt.want.Kind, tt.want)
			}
		})
	}
}

func TestMayAct(t *testing.T) {
	until := time.Date(2026, 3, 1, 9, 2, 0, 0, time.UTC)
	tests := []struct {
		name string
		now  time.Time
		need time.Duration
		want bool
	}{
		{"the effect fits in the claim", until.Add(-time.Minute), 30 * time.Second, true},
		{"the effect just fits", until.Add(-30 * time.Second), 30 * time.Second, true},
		{"the claim ends before the effect could: leave it to expire", until.Add(-29 * time.Second), 30 * time.Second, false},
		{"the claim expired", until.Add(time.Second), 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := domain.MayAct(until, tt.now, tt.need); got != tt.want {
				t.Fatalf("MayAct = %v, want %v", got, tt.want)
			}
		})
	}
}
