package domain

import (
	"fmt"
	"strings"
)

// Webhook actions (wpf_action) usersync acts on.
const (
	ActionAdd        = "add"
	ActionUpdate     = "update"
	ActionUpdateTags = "update_tags"
	ActionTest       = "test"
)

// NormalizeAction lower-cases wpf_action and maps the add_user alias to add.
// known is false for an action usersync does not handle.
func NormalizeAction(raw string) (action string, known bool) {
	a := strings.ToLower(strings.TrimSpace(raw))
	if a == "add_user" {
		a = ActionAdd
	}
	switch a {
	case ActionAdd, ActionUpdate, ActionUpdateTags, ActionTest:
		return a, true
	}
	return a, false
}

// ParseBool reads a webhook flag: 1, true, yes, on are true; 0, false, no,
// off and empty are false; anything else is an error.
func ParseBool(name, v string) (bool, error) {
	switch strings.ToLower(strings.TrimSpace(v)) {
	case "1", "true", "yes", "on":
		return true, nil
	case "0", "false", "no", "off", "":
		return false, nil
	}
	return false, fmt.Errorf("%s must be one of 1, true, yes, on, 0, false, no, off; got %q", name, Truncate(v, 40))
}

// Request is a recorded webhook read as a command.
type Request struct {
	Action           string
	Role             string
	SendNotification bool
	Async            bool
	// Email is the fallback lookup address of update and update_tags.
	Email string
	// Tags are the entries of the tags param; HasTags tells an absent
	// param from an empty one (which clears the tags).
	Tags    []string
	HasTags bool
}

// ParseRequest validates a recorded webhook's parameters.
func ParseRequest(w WebhookReceived) (Request, error) {
	action, known := NormalizeAction(w.Action)
	if !known || action == ActionTest {
		return Request{}, fmt.Errorf("unknown wpf_action %q: use add, update or update_tags", Truncate(w.Action, 40))
	}
	r := Request{Action: action, Role: strings.TrimSpace(w.Params["role"]), Email: NormalizeEmail(w.Params["email"])}
	var err error
	if r.SendNotification, err = ParseBool("send_notification", w.Params["send_notification"]); err != nil {
		return Request{}, err
	}
	if r.Async, err = ParseBool("async", w.Params["async"]); err != nil {
		return Request{}, err
	}
	if raw, ok := w.Params["tags"]; ok {
		r.HasTags = true
		for _, t := range strings.Split(raw, ",") {
			if t = strings.TrimSpace(t); t != "" {
				r.Tags = append(r.Tags, t)
			}
		}
	}
	return r, nil
}
