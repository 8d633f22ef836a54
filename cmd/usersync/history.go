package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	json "github.com/goccy/go-json"

	"github.com/usersync/usersync/domain"
	"github.com/usersync/usersync/projections"
)

func historyCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("history", flag.ContinueOnError)
	fs.SetOutput(stderr)
	of := addOfflineFlags(fs)
	asJSON := fs.Bool("json", false, "print the page as JSON (for scripts)")
	limit := fs.Int("limit", 50, fmt.Sprintf("events per page (1–%d)", projections.MaxTimelinePage))
	before := fs.String("before", "", "cursor: show the events before this one (the \"next\" of the page before)")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: usersync history CONTACT_ID [--json] [--limit N] [--before CURSOR] [--data DIR] [--store esdb://…]\n\n"+
			"Every event of a contact, newest first, in words: when, what, the webhook that caused it\nand what it changed in the meta. Works on a stopped server's data directory.\n\n")
		fs.PrintDefaults()
	}
	pos, help, err := splitArgs(fs, args, stderr)
	if help || err != nil {
		return err
	}
	if len(pos) != 1 {
		return usageError(stderr, fs, "give one CONTACT_ID (got %d arguments); see usersync history --help", len(pos))
	}
	id, err := domain.ParseContactID(pos[0])
	if err != nil {
		return usageError(stderr, fs, "CONTACT_ID %q: %v", domain.Truncate(pos[0], 40), err)
	}
	if *limit < 1 || *limit > projections.MaxTimelinePage {
		return usageError(stderr, fs, "--limit %d must be 1 to %d", *limit, projections.MaxTimelinePage)
	}
	var cursor uint64
	if *before != "" {
		if cursor, err = strconv.ParseUint(*before, 10, 64); err != nil || cursor == 0 {
			return usageError(stderr, fs, "--before %q must be the cursor a page printed (a positive number)", domain.Truncate(*before, 40))
		}
	}
	o, err := of.open(ctx, stderr, true, false)
	if err != nil {
		return err
	}
	defer o.Close()
	var receipts projections.Receipts
	// The receipts complete the webhooks whose events are on other pages;
	// without views.db the timeline does without (it never creates one).
	if fi, err := os.Stat(o.paths.views()); err == nil && fi.Mode().IsRegular() {
		views, err := projections.Open(ctx, o.paths.views())
		if err != nil {
			return err
		}
		defer views.Close()
		receipts = views.Webhooks
	}
	page, err := projections.Timeline(ctx, o.store, receipts, id, cursor, *limit)
	if err != nil {
		return err
	}
	if *asJSON {
		b, err := json.MarshalIndent(page, "", "  ")
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(stdout, "%s\n", b)
		return err
	}
	if len(page.Entries) == 0 {
		if cursor == 0 {
			return fmt.Errorf("contact %d has no events in %s", id, o.store.where)
		}
		fmt.Fprintf(stdout, "contact %d: no events before %d\n", id, cursor)
		return nil
	}
	writeTimeline(stdout, page)
	if page.Next != 0 {
		fmt.Fprintf(stdout, "\nolder events: usersync history %d %s--before %d\n", page.ContactID, repeatFlags(fs, "before"), page.Next)
	}
	return nil
}

// writeTimeline prints a timeline page for people (the hint for the next
// page is the caller's).
func writeTimeline(w io.Writer, page projections.TimelinePage) {
	first, last := page.Entries[0].Version, page.Entries[len(page.Entries)-1].Version
	fmt.Fprintf(w, "contact %d: events %d to %d, newest first\n\n", page.ContactID, first, last)
	shown := map[string]bool{}
	for _, e := range page.Entries {
		fmt.Fprintf(w, "%s  #%-4d %s\n", e.At.Format(time.RFC3339), e.Version, e.Words)
		if e.Type != domain.TypeMetaPulled { // its words are the diff
			for _, c := range e.MetaDiff {
				fmt.Fprintf(w, "%26s meta %s: %s → %s\n", "", c.Key, orNoneText(c.Old), orNoneText(c.New))
			}
		}
		// A webhook is described at its newest event on the page.
		if wh := e.Webhook; wh != nil && !shown[wh.ID] {
			shown[wh.ID] = true
			line := fmt.Sprintf("webhook %s", wh.ID)
			if wh.Action != "" {
				line += " " + wh.Action
			}
			if wh.Method != "" {
				line += fmt.Sprintf(" (%s from %s)", wh.Method, wh.Source)
			}
			line += ": " + wh.Outcome
			if wh.Message != "" {
				line += ", " + wh.Message
			}
			fmt.Fprintf(w, "%26s %s\n", "", line)
			if len(wh.Params) > 0 {
				keys := slices.Sorted(maps.Keys(wh.Params))
				parts := make([]string, len(keys))
				for i, k := range keys {
					parts[i] = k + "=" + domain.Truncate(wh.Params[k], 60)
				}
				fmt.Fprintf(w, "%26s params %s\n", "", strings.Join(parts, " "))
			}
		}
		if e.Error != "" {
			fmt.Fprintf(w, "%26s error: %s\n", "", e.Error)
		}
	}
}

func orNoneText(s string) string {
	if s == "" {
		return "(none)"
	}
	return s
}
