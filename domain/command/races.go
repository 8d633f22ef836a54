package command

import (
	"errors"
	"fmt"

	"github.com/usersync/usersync/domain"
)

// Lost races. With several nodes on one EventStoreDB two of them can
// decide one contact's oldest open webhook at once (an item delivered
// twice, a member leaving); on one node the intake of the contact's next
// webhook, or a process manager's record, can move the stream between a
// decision's read and its append. The append at the version read loses,
// and NextBatch loads the contact again and decides again. What that costs
// is bounded, and counted (ProcessWebhookConfig.OnRaceLost,
// OnCRMReadWasted):
//
//   - a webhook another writer closed meanwhile is not decided again: with
//     nothing open left, NextBatch returns no outcome and reads nothing
//     more from FunnelKit;
//   - the FunnelKit contact read of the lost attempt is reused for the
//     webhooks it covers (those open when it was made: deciding them then
//     would have seen the same answer); a webhook recorded after it is
//     read for again ("read_again"), and one decided in a batch with others
//     ends the batch instead;
//   - a decision lost to another decision (its webhook closed or retried,
//     the contact's user changed, a claim or a linked user changed) is
//     made again at most MaxRedecisions times per NextBatch; then it gives
//     up with ErrRacesLost, nothing appended, the webhook open, and the
//     work item unacked: the dispatcher tries the contact again after its
//     error pause, or the work feed gives the item to another node. So a
//     NextBatch reads the contact from FunnelKit at most 1 + MaxRedecisions
//     times. A race lost to a writer that left the decision's inputs as
//     they were (an intake, a process manager) needs no new read: it is
//     bounded by the conflict policy's attempts (20) only.

// errClaimBusy asks for a new decision because another webhook of this
// process holds a claim lock the decision needs (claims.go): no race lost
// in the store, and not counted as one (bounded by the conflict policy's
// attempts only, as a busy lock is released within one decision).
var errClaimBusy = fmt.Errorf("%w: an address or login is being claimed by another webhook of this process", errStale)

// MaxRedecisions is how many times one NextBatch decides again after
// losing to another decision before it leaves the work for later.
const MaxRedecisions = 3

// decidedOn is what a decision depended on in its contact's state: the
// webhook it decided (and its attempts) and the user (with its address and
// login). A race lost without them changing was lost to a writer that is
// not deciding this contact.
type decidedOn struct {
	webhook  string
	attempts int
	user     string
}

func decidedOnOf(s *domain.ContactState) decidedOn {
	var d decidedOn
	if len(s.Pending) > 0 {
		d.webhook, d.attempts = s.Pending[0].WebhookID, s.Pending[0].Attempts
	}
	if s.User != nil {
		d.user = settledKey(s.User)
	}
	return d
}

// lostRace is the conflict hook of NextBatch's update loop.
func (w *work) lostRace(err error) {
	w.lost = err
	if errors.Is(err, errClaimBusy) {
		return
	}
	useCase := "webhook"
	if errors.Is(err, errStale) {
		useCase = "claim"
	}
	w.p.raceLost(useCase)
}

// again is called before each attempt: after a lost race it counts a
// re-decision when the race was lost to another decision (see above) and
// gives up past MaxRedecisions, while something is still open.
func (w *work) again(s *domain.ContactState) error {
	if w.lost == nil {
		return nil
	}
	if (errors.Is(w.lost, errStale) && !errors.Is(w.lost, errClaimBusy)) || decidedOnOf(s) != w.first {
		w.redecided++
	}
	if w.redecided > MaxRedecisions && len(s.Pending) > 0 {
		return fmt.Errorf("%w: lost %d decisions in a row to other writers", ErrRacesLost, w.redecided)
	}
	return nil
}

// hasRead reports whether the contact was read from FunnelKit (answer or
// failure kept).
func (w *work) hasRead() bool { return w.contact != nil || w.contactErr != nil }

// countWasted reports, at the end of a NextBatch that lost a race, the
// contact read no recorded decision used. (A read replaced by a new one
// was reported when it was replaced.)
func (w *work) countWasted(appended bool, err error) {
	if w.lost == nil || !w.hasRead() {
		return
	}
	switch {
	case errors.Is(err, ErrRacesLost):
		w.p.crmWasted("gave_up")
	case err != nil:
		// A store error: the read is lost with the attempt, not to a race.
	case !appended || !w.readUsed:
		w.p.crmWasted("unused")
	}
}

// covered reports whether the contact's read, if one was made, covers the
// webhook (see work.covers).
func (w *work) covered(webhookID string) bool { return !w.hasRead() || w.covers[webhookID] }
