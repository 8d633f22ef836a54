package domain

import (
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Describe is an event in words, as an operator reads it in a timeline:
// "Tags changed: +VIP −Trial", "Meta changed: phone 555-1 → 555-2",
// "User created as subscriber (login alice, email alice@example.com)". It
// never quotes a secret (a password, its hash, a sealed password). An
// event of a type this build does not describe is named by its type.
func Describe(e Event) string {
	switch e := e.(type) {
	case WebhookReceived:
		return fmt.Sprintf("Webhook received: %s by %s from %s", orNone(e.Action), orNone(e.Method), orNone(e.Source))
	case WebhookProcessed:
		return "Webhook processed: " + orNone(e.Message)
	case WebhookIgnored:
		return "Webhook ignored: " + orNone(e.Reason)
	case WebhookFailed:
		return fmt.Sprintf("Webhook failed (status %d): %s", e.Status, orNone(e.Reason))
	case WebhookRetrying:
		return fmt.Sprintf("Webhook to be retried (attempt %d failed: %s); next attempt at %s", e.Attempt, orNone(e.Error), clock(e.NextAttemptAt))
	case UserCreated:
		s := fmt.Sprintf("User created as %s (login %s, email %s)", orNone(string(e.Role)), orNone(e.Login), orNone(e.Email))
		if e.WelcomeEmail {
			s += ", welcome email asked for"
		}
		return s
	case UserLinked:
		return fmt.Sprintf("User linked from contact %d as %s (login %s, email %s)", e.FromContactID, orNone(string(e.Role)), orNone(e.Login), orNone(e.Email))
	case UserUnlinked:
		return fmt.Sprintf("User moved to contact %d", e.ToContactID)
	case MetaPulled:
		if len(e.Changes) == 0 {
			return "Meta changed: nothing"
		}
		parts := make([]string, len(e.Changes))
		for i, c := range e.Changes {
			parts[i] = fmt.Sprintf("%s %s → %s", c.Key, orNone(c.Old), orNone(c.New))
		}
		return "Meta changed: " + strings.Join(parts, ", ")
	case TagsUpdated:
		parts := make([]string, 0, len(e.Added)+len(e.Removed))
		for _, t := range e.Added {
			parts = append(parts, "+"+tagWord(t))
		}
		for _, t := range e.Removed {
			parts = append(parts, "−"+tagWord(t))
		}
		if len(parts) == 0 {
			return "Tags changed: none added or removed"
		}
		return "Tags changed: " + strings.Join(parts, " ")
	case RoleChanged:
		return fmt.Sprintf("Role changed: %s → %s", orNone(string(e.Old)), orNone(string(e.New)))
	case PasswordIssued:
		return "Password issued for FunnelKit field " + orNone(e.Field)
	case PasswordReturnClaimed:
		return fmt.Sprintf("Password return to FunnelKit field %s claimed%s (attempt %d, until %s)", orNone(e.Field), byNode(e.Node), e.Attempt, clock(e.Until))
	case PasswordReturned:
		return fmt.Sprintf("Password returned to FunnelKit field %s (attempt %d)", orNone(e.Field), e.Attempt)
	case PasswordReturnFailed:
		s := fmt.Sprintf("Password return to FunnelKit field %s failed (attempt %d): %s", orNone(e.Field), e.Attempt, orNone(e.Error))
		if e.GaveUp {
			return s + "; given up"
		}
		return s + "; next attempt at " + clock(e.NextAttemptAt)
	case PasswordReplaced:
		return fmt.Sprintf("Password replaced for FunnelKit field %s (the old one, key %s, is never returned)", orNone(e.Field), orNone(e.OldKeyID))
	case WelcomeEmailClaimed:
		return fmt.Sprintf("Welcome email to %s claimed%s (attempt %d, until %s)", orNone(e.To), byNode(e.Node), e.Attempt, clock(e.Until))
	case OperatorActed:
		if what, ok := retried(e.Action); ok {
			s := fmt.Sprintf("Operator retried the %s (%s, from %s)", what, orNone(e.Credential), orNone(e.Source))
			if e.Outcome != "" {
				s += ": " + e.Outcome
			}
			return s
		}
		s := "Operator " + strings.ReplaceAll(orNone(e.Action), "_", " ")
		if e.Target != "" {
			s += " of " + e.Target
		}
		s += fmt.Sprintf(" from %s with the %s", orNone(e.Source), orNone(e.Credential))
		if e.Outcome != "" {
			s += ": " + e.Outcome
		}
		return s
	case WelcomeEmailSent:
		return fmt.Sprintf("Welcome email sent to %s by %s (attempt %d)", orNone(e.To), orNone(e.Transport), e.Attempt)
	case WelcomeEmailFailed:
		s := fmt.Sprintf("Welcome email to %s failed (attempt %d): %s", orNone(e.To), e.Attempt, orNone(e.Error))
		if e.GaveUp {
			return s + "; given up"
		}
		return s + "; next attempt at " + clock(e.NextAttemptAt)
	case EmailReserved:
		return fmt.Sprintf("Email %s reserved for contact %d", orNone(e.Email), e.ContactID)
	case EmailReleased:
		return fmt.Sprintf("Email %s released by contact %d", orNone(e.Email), e.ContactID)
	case LoginReserved:
		return fmt.Sprintf("Login %s reserved for contact %d", orNone(e.Login), e.ContactID)
	case nil:
		return "(no event)"
	}
	return e.EventType()
}

// retried names what a retry action retries, in words (false for other
// actions).
func retried(action string) (string, bool) {
	switch action {
	case ActionRetryPasswordReturn:
		return "password return", true
	case ActionRetryWelcomeEmail:
		return "welcome email", true
	}
	return "", false
}

// MetaDiff is what an event changed in the user's meta, before and after,
// sorted by key: the changes of a MetaPulled, every field of a linked
// user (it had none here before). Other events change no meta (nil).
func MetaDiff(e Event) []MetaChange {
	switch e := e.(type) {
	case MetaPulled:
		return slices.Clone(e.Changes)
	case UserLinked:
		if len(e.Meta) == 0 {
			return nil
		}
		out := make([]MetaChange, 0, len(e.Meta))
		for _, k := range slices.Sorted(maps.Keys(e.Meta)) {
			out = append(out, MetaChange{Key: k, New: e.Meta[k]})
		}
		return out
	}
	return nil
}

func orNone(s string) string {
	if s == "" {
		return "(none)"
	}
	return s
}

func tagWord(t Tag) string {
	if t.Name == "" {
		return "#" + strconv.FormatUint(t.ID, 10)
	}
	return t.Name
}

func byNode(node string) string {
	if node == "" {
		return ""
	}
	return " by node " + node
}

func clock(t time.Time) string {
	if t.IsZero() {
		return "(none)"
	}
	return t.UTC().Format(time.RFC3339)
}
