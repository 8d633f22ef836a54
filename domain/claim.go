package domain

import "time"

// Claims make an effect outside the log (a password written to FunnelKit,
// a welcome mail sent) happen on one node at a time when several nodes
// share the log: before acting, a node appends a claim of the next attempt
// at the version of the contact's stream it read, and only the node whose
// append wins acts. The decisions below say, from a contact's state, what
// a node may do now; the use cases in domain/command carry them out.

// AttemptClaim is the latest claim of an attempt: the attempt, how long
// the claim holds, and the node that made it.
type AttemptClaim struct {
	Attempt int
	Until   time.Time
	Node    string
}

// liveFor reports whether the claim holds against node at now: no result
// closed its attempt (closed is the last attempt with a result), it has
// not expired, and another node made it. A node asks only when it has no
// attempt of its own in flight, so a claim it made itself is from before
// a restart: nobody acts on it any more. An empty node is nobody's.
func (c *AttemptClaim) liveFor(node string, now time.Time, closed int) bool {
	return c != nil && c.Attempt > closed && now.Before(c.Until) && (node == "" || c.Node != node)
}

// StepKind is what a node is to do next about a password return or a
// welcome mail.
type StepKind int

// The steps.
const (
	// StepDone: nothing is left to do (returned, sent, given up, or the
	// password was replaced by a newer one).
	StepDone StepKind = iota
	// StepWait: nothing to do before Step.At (another claim holds, a retry
	// is not due yet, or the take-over delay runs); decide again then.
	StepWait
	// StepClaim: claim attempt Step.Attempt now, and act if the claim wins.
	StepClaim
	// StepReplace: the password's key is not here and its issuing node
	// showed no sign of life for the take-over delay: issue a replacement.
	StepReplace
)

func (k StepKind) String() string {
	switch k {
	case StepDone:
		return "done"
	case StepWait:
		return "wait"
	case StepClaim:
		return "claim"
	case StepReplace:
		return "replace"
	}
	return "unknown"
}

// Step is a decision: its kind, the attempt to claim (StepClaim) and when
// to decide again (StepWait).
type Step struct {
	Kind    StepKind
	Attempt int
	At      time.Time
}

// nextAttempt is the number of the next attempt: one more than any
// attempt claimed or closed.
func nextAttempt(closed int, c *AttemptClaim) int {
	n := closed
	if c != nil && c.Attempt > n {
		n = c.Attempt
	}
	return n + 1
}

// NextReturnStep decides what node does about the password return p at
// now, with no attempt of its own in flight. haveKey says whether node's
// key store holds p's key: only such a node may claim an attempt. A node
// without the key waits for takeover after the issuing node's last sign
// of life (the issue, its last claim's Until, its last failure's next
// attempt), then replaces the password.
func NextReturnStep(p *PasswordReturn, node string, haveKey bool, now time.Time, takeover time.Duration) Step {
	if p == nil || p.Done {
		return Step{Kind: StepDone}
	}
	if p.Claim.liveFor(node, now, p.Attempts) {
		return Step{Kind: StepWait, At: p.Claim.Until}
	}
	if !haveKey {
		if at := p.LastSign().Add(takeover); now.Before(at) {
			return Step{Kind: StepWait, At: at}
		}
		return Step{Kind: StepReplace}
	}
	if now.Before(p.NextAttemptAt) {
		return Step{Kind: StepWait, At: p.NextAttemptAt}
	}
	return Step{Kind: StepClaim, Attempt: nextAttempt(p.Attempts, p.Claim)}
}

// LastSign is the last time the node issuing p showed it was at work on
// it: the issue (or replacement), its latest claim's Until while no result
// closed the claim, its latest failure's next attempt. A claim closed by a
// failure (an interrupted attempt's release, say) holds nothing after the
// failure: its effect is over.
func (p *PasswordReturn) LastSign() time.Time {
	t := p.IssuedAt
	if p.Claim != nil && p.Claim.Attempt > p.Attempts && p.Claim.Until.After(t) {
		t = p.Claim.Until
	}
	if p.NextAttemptAt.After(t) {
		t = p.NextAttemptAt
	}
	return t
}

// NextWelcomeStep decides what node does about the welcome mail w at now,
// with no attempt of its own in flight: any node may claim it once no
// live claim of another node holds and its retry is due.
func NextWelcomeStep(w *WelcomeMail, node string, now time.Time) Step {
	if w == nil || w.Done {
		return Step{Kind: StepDone}
	}
	if w.Claim.liveFor(node, now, w.Attempts) {
		return Step{Kind: StepWait, At: w.Claim.Until}
	}
	if now.Before(w.NextAttemptAt) {
		return Step{Kind: StepWait, At: w.NextAttemptAt}
	}
	return Step{Kind: StepClaim, Attempt: nextAttempt(w.Attempts, w.Claim)}
}

// MayAct reports whether a node whose claim holds until until may start an
// effect at now that can take up to need: a claim about to expire is left
// to expire (another node may claim the next attempt by then). need is the
// effect's timeout plus the clock skew between nodes (another node whose
// clock is ahead sees the claim end that much sooner).
func MayAct(until, now time.Time, need time.Duration) bool {
	return !now.Add(need).After(until)
}

// LeaseFactor is how many times its effect's timeout a claim holds, before
// the margin for the nodes' clocks (ClaimLease).
const LeaseFactor = 2

// ClaimLease is how long a claim holds whose effect (a FunnelKit write, an
// SMTP session) is cut off after effect, between nodes whose clocks differ
// by up to skew: LeaseFactor × effect + skew. The effect ends a skew before
// the claim does on every node's clock, and the claim's append and the
// work before the effect get as long as the effect itself (MayAct leaves a
// claim whose slack ran out to expire unused). A node that dies in an
// attempt holds its work for no longer than that.
func ClaimLease(effect, skew time.Duration) time.Duration {
	return LeaseFactor*effect + skew
}

// WelcomeMail is the state of the welcome email of the contact's latest
// user created with the email asked for.
type WelcomeMail struct {
	UserID string
	To     string
	Login  string
	// MessageID is the Message-ID of the first claim; every attempt
	// sends with it ("" before the first claim).
	MessageID string
	// Attempts is the last attempt a result (sent, failed) closed.
	Attempts      int
	NextAttemptAt time.Time
	// Done is true once sent or given up.
	Done bool
	// GaveUp is true once given up (until an operator's retry).
	GaveUp bool
	Claim  *AttemptClaim
}
