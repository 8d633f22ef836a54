package projections

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/usersync/usersync/domain"
)

// UserQuery is a search of the users view. Its zero value lists every user.
type UserQuery struct {
	// Search matches a contact id exactly (a number), or the start of an
	// email or a login (through their indexes).
	Search string
	// Tag keeps only users with this tag id (0: any).
	Tag uint64
	// Role keeps only users with this role ("": any).
	Role domain.Role
	// After is the cursor: users with a greater contact id.
	After domain.ContactID
	// Limit is the page size (1 to MaxUserPage).
	Limit int
}

// MaxUserPage is the most users one page of Search holds.
const MaxUserPage = 1000

// UserPage is a page of users in contact id order.
type UserPage struct {
	Users []User `json:"users"`
	// Total counts every user the query matches, on all pages.
	Total int `json:"total"`
	// Next is the cursor of the next page (pass it as After), 0 on the last.
	Next domain.ContactID `json:"next,omitempty"`
}

// Search returns a page of the users q matches, in contact id order, and
// how many match in all. It reads through the views' indexes: by contact
// id, email, login, role (users_by_role), and user_tags by tag.
func (v *Users) Search(ctx context.Context, q UserQuery) (UserPage, error) {
	if q.Limit <= 0 || q.Limit > MaxUserPage {
		return UserPage{}, fmt.Errorf("search users: limit %d must be 1 to %d", q.Limit, MaxUserPage)
	}
	from := "users u"
	byPrefix := false
	var where []string
	var args []any
	if q.Tag != 0 {
		from = "user_tags t JOIN users u ON u.contact_id = t.contact_id"
		where, args = append(where, "t.tag_id = ?"), append(args, int64(q.Tag))
	}
	if q.Role != "" {
		where, args = append(where, "u.role = ?"), append(args, string(q.Role))
	}
	if s := strings.TrimSpace(q.Search); s != "" {
		if id, err := domain.ParseContactID(s); err == nil {
			where, args = append(where, "u.contact_id = ?"), append(args, int64(id))
		} else {
			// The start of an email or a login: a range on each index,
			// the matches collected before the page is taken from them.
			end := s + "\U0010FFFF"
			where = append(where, "u.contact_id IN (SELECT contact_id FROM users WHERE email >= ? AND email < ?"+
				" UNION SELECT contact_id FROM users WHERE login >= ? AND login < ?)")
			args = append(args, s, end, s, end)
			byPrefix = true
		}
	}
	cond := ""
	if len(where) > 0 {
		cond = " WHERE " + strings.Join(where, " AND ")
	}
	page := UserPage{Users: []User{}}
	var err error
	page.Total, err = v.countMatching(ctx, q, from, cond, args)
	if err != nil {
		return UserPage{}, err
	}
	after, order := "u.contact_id > ?", "u.contact_id"
	if q.Tag != 0 {
		// Walk user_tags' primary key (tag_id, contact_id).
		after, order = "t.contact_id > ?", "t.contact_id"
	}
	if byPrefix {
		// Not a range of the primary key to walk: the few matches are
		// found through the indexes and sorted.
		after = "+u.contact_id > ?"
	}
	pageCond := cond + " AND " + after
	if cond == "" {
		pageCond = " WHERE " + after
	}
	sel := "SELECT u." + prefixed("u.", userColumns) + " FROM " + from + pageCond + " ORDER BY " + order + " LIMIT ?"
	pageArgs := append(append([]any{}, args...), int64(q.After), int64(q.Limit)+1)
	page.Users, err = queryRows(ctx, v.v, page.Users, scanUser, sel, pageArgs...)
	if err != nil {
		return UserPage{}, fmt.Errorf("search users: %w", err)
	}
	if len(page.Users) > q.Limit {
		page.Users = page.Users[:q.Limit]
		page.Next = page.Users[q.Limit-1].ContactID
	}
	return page, nil
}

// countMatching counts the users a query matches: from the kept counts
// (view_counts, the tags view's users) when it has no condition but a tag,
// a role or nothing at all, by counting rows otherwise.
func (v *Users) countMatching(ctx context.Context, q UserQuery, from, cond string, args []any) (int, error) {
	if strings.TrimSpace(q.Search) == "" && q.Tag == 0 && q.Role != "" {
		var n int
		err := v.v.read(func(db *sql.DB) error {
			return db.QueryRowContext(ctx, "SELECT n FROM view_counts WHERE name = ?", roleCountName(q.Role)).Scan(&n)
		})
		if errors.Is(err, sql.ErrNoRows) {
			return 0, nil
		}
		if err != nil {
			return 0, fmt.Errorf("count users with role %s: %w", q.Role, err)
		}
		return n, nil
	}
	if strings.TrimSpace(q.Search) == "" && q.Role == "" {
		if q.Tag == 0 {
			return v.Count(ctx)
		}
		var n int
		err := v.v.read(func(db *sql.DB) error {
			return db.QueryRowContext(ctx, "SELECT users FROM tags WHERE id = ?", int64(q.Tag)).Scan(&n)
		})
		if errors.Is(err, sql.ErrNoRows) {
			return 0, nil
		}
		if err != nil {
			return 0, fmt.Errorf("count users with tag %s: %w", strconv.FormatUint(q.Tag, 10), err)
		}
		return n, nil
	}
	var n int
	err := v.v.read(func(db *sql.DB) error {
		return db.QueryRowContext(ctx, "SELECT COUNT(*) FROM "+from+cond, args...).Scan(&n)
	})
	if err != nil {
		return 0, fmt.Errorf("count users: %w", err)
	}
	return n, nil
}
