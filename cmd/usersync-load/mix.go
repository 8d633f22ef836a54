package main

import (
	"fmt"
	"math"
	"math/rand/v2"
	"strconv"
	"strings"
)

// Actions the load tool sends, in the order --mix prints them.
var mixActions = []string{"add", "update", "update_tags"}

// mix is the share of each action in the webhooks sent, as weights.
type mix struct {
	weights [3]float64 // by mixActions
	total   float64
}

// parseMix reads "add=10,update=40,update_tags=50". Weights are relative
// (they need not add up to 100); an action left out is not sent.
func parseMix(s string) (mix, error) {
	var m mix
	seen := map[string]bool{}
	if strings.TrimSpace(s) == "" {
		return m, fmt.Errorf("empty mix: give actions with weights, e.g. add=10,update=40,update_tags=50")
	}
	for _, part := range strings.Split(s, ",") {
		name, w, ok := strings.Cut(strings.TrimSpace(part), "=")
		name = strings.ToLower(strings.TrimSpace(name))
		if !ok || name == "" {
			return m, fmt.Errorf("mix entry %q: want action=weight, e.g. update_tags=50", part)
		}
		i := -1
		for j, a := range mixActions {
			if a == name {
				i = j
			}
		}
		if i < 0 {
			return m, fmt.Errorf("mix entry %q: unknown action %q (want add, update or update_tags)", part, name)
		}
		if seen[name] {
			return m, fmt.Errorf("mix entry %q: %s is given twice", part, name)
		}
		seen[name] = true
		f, err := strconv.ParseFloat(strings.TrimSpace(w), 64)
		if err != nil || f < 0 || math.IsNaN(f) || math.IsInf(f, 0) {
			return m, fmt.Errorf("mix entry %q: the weight must be a number, 0 or more", part)
		}
		m.weights[i] = f
		m.total += f
	}
	if m.total == 0 {
		return m, fmt.Errorf("mix %q: every weight is 0; give at least one action a positive weight", s)
	}
	return m, nil
}

// String is the mix as --mix takes it.
func (m mix) String() string {
	var parts []string
	for i, a := range mixActions {
		if m.weights[i] > 0 {
			parts = append(parts, a+"="+strconv.FormatFloat(m.weights[i], 'g', -1, 64))
		}
	}
	return strings.Join(parts, ",")
}

// pick draws an action.
func (m mix) pick(r *rand.Rand) string {
	x := r.Float64() * m.total
	for i, w := range m.weights {
		if x < w {
			return mixActions[i]
		}
		x -= w
	}
	for i := len(m.weights) - 1; i >= 0; i-- {
		if m.weights[i] > 0 {
			return mixActions[i]
		}
	}
	return mixActions[0]
}

// skew is how webhooks pick their contact.
type skew struct {
	kind string // uniform, seq, zipf, hot
	// s is zipf's exponent; hotFrac and hotShare the hot set's size (as a
	// fraction of the contacts) and its share of the webhooks.
	s, hotFrac, hotShare float64
}

// parseSkew reads uniform, seq, zipf=S or hot=F/S.
func parseSkew(v string) (skew, error) {
	name, arg, hasArg := strings.Cut(strings.ToLower(strings.TrimSpace(v)), "=")
	switch name {
	case "uniform", "seq":
		if hasArg {
			return skew{}, fmt.Errorf("--skew %s takes no value", name)
		}
		return skew{kind: name}, nil
	case "zipf":
		s, err := strconv.ParseFloat(arg, 64)
		if !hasArg || err != nil || !(s > 1) || math.IsInf(s, 0) {
			return skew{}, fmt.Errorf("--skew %q: zipf needs an exponent above 1, e.g. zipf=1.1", v)
		}
		return skew{kind: name, s: s}, nil
	case "hot":
		f, sh, ok := strings.Cut(arg, "/")
		frac, err1 := strconv.ParseFloat(f, 64)
		share, err2 := strconv.ParseFloat(sh, 64)
		if !hasArg || !ok || err1 != nil || err2 != nil || !(frac > 0 && frac < 1) || !(share > 0 && share < 1) {
			return skew{}, fmt.Errorf("--skew %q: hot=F/S needs a fraction F of the contacts and the share S of webhooks they get, both between 0 and 1, e.g. hot=0.01/0.5", v)
		}
		return skew{kind: name, hotFrac: frac, hotShare: share}, nil
	}
	return skew{}, fmt.Errorf("--skew %q: want uniform, seq, zipf=S or hot=F/S", v)
}

func (s skew) String() string {
	switch s.kind {
	case "zipf":
		return "zipf=" + strconv.FormatFloat(s.s, 'g', -1, 64)
	case "hot":
		return "hot=" + strconv.FormatFloat(s.hotFrac, 'g', -1, 64) + "/" + strconv.FormatFloat(s.hotShare, 'g', -1, 64)
	}
	return s.kind
}

// picker draws contacts for one connection; seq uses the request's index
// so that all connections together go through the contacts in turn.
type picker struct {
	skew     skew
	first, n uint64
	hot      uint64
	zipf     *rand.Zipf
	r        *rand.Rand
}

func newPicker(s skew, first, n int, r *rand.Rand) *picker {
	p := &picker{skew: s, first: uint64(first), n: uint64(n), r: r}
	switch s.kind {
	case "zipf":
		p.zipf = rand.NewZipf(r, s.s, 1, p.n-1)
	case "hot":
		p.hot = max(1, uint64(float64(n)*s.hotFrac))
	}
	return p
}

// pick is the contact of request i.
func (p *picker) pick(i uint64) uint64 {
	switch p.skew.kind {
	case "seq":
		return p.first + i%p.n
	case "zipf":
		return p.first + p.zipf.Uint64()
	case "hot":
		if p.hot >= p.n || p.r.Float64() < p.skew.hotShare {
			return p.first + p.r.Uint64N(p.hot)
		}
		return p.first + p.hot + p.r.Uint64N(p.n-p.hot)
	}
	return p.first + p.r.Uint64N(p.n)
}
