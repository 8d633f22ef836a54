package projections_test

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"

	"github.com/usersync/usersync/domain"
	"github.com/usersync/usersync/eventstore"
	"github.com/usersync/usersync/projections"
)

// BenchmarkTimelinePage reads a page of 50 events of a contact with 10,000
// events on the embedded store: the newest page, and the oldest (a page
// costs the same wherever it is).
func BenchmarkTimelinePage(b *testing.B) {
	ctx := context.Background()
	store, err := eventstore.Open(ctx, filepath.Join(b.TempDir(), "events.db"))
	if err != nil {
		b.Fatal(err)
	}
	defer store.Close()
	raw, err := domain.EncodeAll(contactLife(1, 10_000))
	if err != nil {
		b.Fatal(err)
	}
	for len(raw) > 0 {
		k := min(len(raw), 1000)
		if _, err := store.Append(ctx, domain.ContactID(1).Stream(), domain.AnyVersion(), raw[:k]...); err != nil {
			b.Fatal(err)
		}
		raw = raw[k:]
	}
	for _, bc := range []struct {
		name   string
		before uint64
	}{{"newest", 0}, {"oldest", 51}} {
		b.Run(bc.name, func(b *testing.B) {
			for b.Loop() {
				page, err := projections.Timeline(ctx, store, nil, 1, bc.before, 50)
				if err != nil || len(page.Entries) != 50 {
					b.Fatalf("%d entries, %v", len(page.Entries), err)
				}
			}
		})
	}
}

// BenchmarkUsersSearch searches the users view of USERSYNC_BENCH_USERS
// users (100,000 by default; 3 events each): a page of 50 of all users,
// by tag, by role, by the start of an email, by contact id, each with its
// count.
func BenchmarkUsersSearch(b *testing.B) {
	n := 100_000
	if v := os.Getenv("USERSYNC_BENCH_USERS"); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil || n <= 0 {
			b.Fatalf("USERSYNC_BENCH_USERS=%q: want a count of users", v)
		}
	}
	ctx := context.Background()
	dir := b.TempDir()
	store, err := eventstore.Open(ctx, filepath.Join(dir, "events.db"))
	if err != nil {
		b.Fatal(err)
	}
	defer store.Close()
	work := make(chan int)
	var wg sync.WaitGroup
	var failed sync.Once
	for range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for c := range work {
				raw, err := domain.EncodeAll(contactLife(c, 3))
				if err == nil {
					_, err = store.Append(ctx, domain.ContactID(c).Stream(), domain.NoStream(), raw...)
				}
				if err != nil {
					failed.Do(func() { b.Error(err) })
				}
			}
		}()
	}
	for c := 1; c <= n; c++ {
		work <- c
	}
	close(work)
	wg.Wait()
	if b.Failed() {
		b.FailNow()
	}
	views, err := projections.Open(ctx, filepath.Join(dir, "views.db"))
	if err != nil {
		b.Fatal(err)
	}
	defer views.Close()
	if _, err := views.Rebuild(ctx, store, nil); err != nil {
		b.Fatal(err)
	}
	for _, bc := range []struct {
		name string
		q    projections.UserQuery
	}{
		{"all", projections.UserQuery{Limit: 50}},
		{"tag", projections.UserQuery{Tag: 7, Limit: 50}},
		{"role", projections.UserQuery{Role: "subscriber", Limit: 50}},
		{"email-start", projections.UserQuery{Search: "c4242", Limit: 50}},
		{"contact-id", projections.UserQuery{Search: strconv.Itoa(n / 2), Limit: 50}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			for b.Loop() {
				page, err := views.Users.Search(ctx, bc.q)
				if err != nil || len(page.Users) == 0 {
					b.Fatalf("%d users, %v", len(page.Users), err)
				}
			}
		})
	}
}
