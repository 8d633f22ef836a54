package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"

	json "github.com/goccy/go-json"

	"github.com/usersync/usersync/domain"
	"github.com/usersync/usersync/projections"
)

func usersCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("users", flag.ContinueOnError)
	fs.SetOutput(stderr)
	of := addOfflineFlags(fs)
	search := fs.String("search", "", "a contact id, or the start of an email or a login")
	tag := fs.Uint64("tag", 0, "only users with this tag id")
	role := fs.String("role", "", "only users with this role")
	limit := fs.Int("limit", 50, fmt.Sprintf("users per page (1–%d)", projections.MaxUserPage))
	after := fs.String("after", "", "cursor: the users after this one (the \"next\" of the page before)")
	asJSON := fs.Bool("json", false, "print the page as JSON (for scripts)")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: usersync users [--search S] [--tag ID] [--role R] [--limit N] [--after CURSOR] [--json] [--data DIR]\n\n"+
			"Searches the users view by contact id, email or login, filtered by tag and role,\na page at a time in contact id order, with the number of users that match.\n\n")
		fs.PrintDefaults()
	}
	if help, err := parseFlags(fs, args, stderr); help || err != nil {
		return err
	}
	if *limit < 1 || *limit > projections.MaxUserPage {
		return usageError(stderr, fs, "--limit %d must be 1 to %d", *limit, projections.MaxUserPage)
	}
	q := projections.UserQuery{Search: *search, Tag: *tag, Role: domain.Role(strings.TrimSpace(*role)), Limit: *limit}
	if *after != "" {
		id, err := domain.ParseContactID(*after)
		if err != nil {
			return usageError(stderr, fs, "--after %q must be the cursor a page printed (a contact id)", domain.Truncate(*after, 40))
		}
		q.After = id
	}
	o, err := of.open(ctx, stderr, false, true)
	if err != nil {
		return err
	}
	defer o.Close()
	page, err := o.views.Users.Search(ctx, q)
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
	if len(page.Users) == 0 {
		fmt.Fprintf(stdout, "no users match (%d in all)\n", page.Total)
		return nil
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "CONTACT\tLOGIN\tEMAIL\tROLE\tTAGS\tUPDATED")
	for _, u := range page.Users {
		tags := make([]string, len(u.Tags))
		for i, t := range u.Tags {
			tags[i] = strconv.FormatUint(t.ID, 10) + ":" + t.Name
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\n", u.ContactID, u.Login, u.Email, u.Role, strings.Join(tags, ","), u.UpdatedAt.Format("2006-01-02T15:04:05Z"))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "\n%d shown, %d match\n", len(page.Users), page.Total)
	if page.Next != 0 {
		fmt.Fprintf(stdout, "next page: usersync users %s--after %d\n", repeatFlags(fs, "after"), page.Next)
	}
	return nil
}

// repeatFlags are the flags given, but for the cursor, to repeat in the
// hint for the next page.
func repeatFlags(fs *flag.FlagSet, cursor string) string {
	var b strings.Builder
	fs.Visit(func(f *flag.Flag) {
		if f.Name == cursor || isSecretFlag(f.Name) {
			return
		}
		if bf, ok := f.Value.(interface{ IsBoolFlag() bool }); ok && bf.IsBoolFlag() {
			fmt.Fprintf(&b, "--%s ", f.Name)
			return
		}
		fmt.Fprintf(&b, "--%s %s ", f.Name, shellWord(f.Value.String()))
	})
	return b.String()
}

// shellWord is v as one shell word: quoted when it holds anything but
// letters, digits and -_./@:+,=.
func shellWord(v string) string {
	if v != "" && strings.Trim(v, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_./@:+,=") == "" {
		return v
	}
	return "'" + strings.ReplaceAll(v, "'", `'\''`) + "'"
}
