package funnelkit

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"strconv"

	"github.com/usersync/usersync/domain"
)

// Paging of the tag catalogue.
const tagPageSize = 100

// maxTagPages bounds the pages read, against a site whose paging never
// ends. A variable so that a test can lower it.
var maxTagPages = 1000

// Tags reads the whole tag catalogue (GET v3/tags, 100 at a time), sorted
// by id.
func (c *Client) Tags(ctx context.Context) ([]domain.Tag, error) {
	var all []domain.Tag
	var prevFirst uint64
	for page := range maxTagPages {
		offset := page * tagPageSize
		k := call{method: http.MethodGet, endpoint: EndpointTags, path: []string{"tags"},
			query: url.Values{"limit": {strconv.Itoa(tagPageSize)}, "offset": {strconv.Itoa(offset)}}}
		env, err := c.do(ctx, k)
		if err != nil {
			return nil, err
		}
		if _, ok := env.fields["result"]; !ok {
			return nil, c.fail(k.op(), KindInvalidJSON, http.StatusOK, "the answer has no tag list (no result)", nil)
		}
		tags, derr := decodeTags(env.result())
		if derr != nil {
			return nil, c.fail(k.op(), KindInvalidJSON, http.StatusOK, "unexpected tag list: "+derr.Error(), nil)
		}
		if len(tags) > 0 && page > 0 && tags[0].ID == prevFirst {
			return nil, c.fail(k.op(), KindInvalidJSON, http.StatusOK,
				fmt.Sprintf("the same tags came back for offset %d: the site ignores offset", offset), nil)
		}
		all = append(all, tags...)
		if len(tags) < tagPageSize {
			return domain.SortTags(all), nil
		}
		prevFirst = tags[0].ID
	}
	return nil, c.fail("GET v3/tags", KindInvalidJSON, http.StatusOK,
		fmt.Sprintf("more than %d tags: the site's paging seems broken", maxTagPages*tagPageSize), nil)
}
