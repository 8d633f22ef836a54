package esdbtest

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/google/uuid"
)

// Persistent subscription groups are kept like the real server keeps them: the whole set of
// groups as one event in $persistentSubscriptionConfig, rewritten at every create and delete,
// and each group's checkpoint in its checkpoint stream. A log reloaded from a data file thus
// brings its groups back, resuming after their checkpoints. (The event's JSON is the
// stand-in's own, not the server's PersistentConfig1 format.)

const (
	configStream    = "$persistentSubscriptionConfig"
	configEventType = "PersistentConfig1"
)

type groupsConfig struct {
	Groups []groupConfig `json:"groups"`
}

type groupConfig struct {
	Stream            string        `json:"stream"`
	Group             string        `json:"group"`
	Start             int64         `json:"start"`
	Strategy          string        `json:"strategy"`
	MaxRetry          int           `json:"maxRetryCount"`
	MessageTimeoutMs  int64         `json:"messageTimeoutMs"`
	CheckpointAfterMs int64         `json:"checkpointAfterMs"`
	MinCheckpoint     int           `json:"minCheckpointCount"`
	MaxCheckpoint     int           `json:"maxCheckpointCount"`
	MaxSubscribers    int           `json:"maxSubscriberCount"`
	ResolveLinks      bool          `json:"resolveLinks"`
	Filter            *filterConfig `json:"filter,omitempty"`
}

type filterConfig struct {
	OnEventType bool     `json:"onEventType"`
	Prefixes    []string `json:"prefixes,omitempty"`
	Regex       string   `json:"regex,omitempty"`
}

var strategyNames = map[strategy]string{roundRobin: "RoundRobin", dispatchToSingle: "DispatchToSingle", pinned: "Pinned"}

func (g *group) config() groupConfig {
	return groupConfig{
		Stream: g.stream, Group: g.name, Start: g.start,
		Strategy:          strategyNames[g.settings.strategy],
		MaxRetry:          g.settings.maxRetry,
		MessageTimeoutMs:  g.settings.messageTimeout.Milliseconds(),
		CheckpointAfterMs: g.settings.checkpointAfter.Milliseconds(),
		MinCheckpoint:     g.settings.minCheckpoint,
		MaxCheckpoint:     g.settings.maxCheckpoint,
		MaxSubscribers:    g.settings.maxSubscribers,
		ResolveLinks:      g.settings.resolveLinks,
		Filter:            g.filterSpec,
	}
}

// writeConfigLocked records the current set of groups. Callers hold p.mu.
func (p *persistentSubs) writeConfigLocked() {
	cfg := groupsConfig{Groups: []groupConfig{}}
	for _, g := range p.groups {
		cfg.Groups = append(cfg.Groups, g.config())
	}
	slices.SortFunc(cfg.Groups, func(a, b groupConfig) int {
		return strings.Compare(groupKey(a.Stream, a.Group), groupKey(b.Stream, b.Group))
	})
	data, err := json.Marshal(cfg)
	if err != nil {
		p.s.logger.Error("esdb stand-in: encode the persistent subscription config", "err", err)
		return
	}
	l := p.s.log
	l.mu.Lock()
	l.writeLocked(configStream, []proposed{{id: uuid.New(), eventType: configEventType, contentType: "application/json", data: data}})
	l.mu.Unlock()
}

// load brings back the groups of a reloaded log, each after its last checkpoint.
func (p *persistentSubs) load() error {
	l := p.s.log
	l.mu.Lock()
	st := l.streams[configStream]
	var last *record
	if st != nil && len(st.events) > 0 {
		last = st.events[len(st.events)-1]
	}
	l.mu.Unlock()
	if last == nil {
		return nil
	}
	var cfg groupsConfig
	if err := json.Unmarshal(last.data, &cfg); err != nil {
		return fmt.Errorf("esdbtest: persistent subscription config at %d: %w", last.pos, err)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, gc := range cfg.Groups {
		g, err := p.groupFromConfig(gc)
		if err != nil {
			return err
		}
		p.groups[g.key] = g
		p.wg.Add(1)
		go g.run(p.ctx)
	}
	return nil
}

func (p *persistentSubs) groupFromConfig(gc groupConfig) (*group, error) {
	s := groupSettings{
		strategy:        roundRobin,
		maxRetry:        gc.MaxRetry,
		messageTimeout:  time.Duration(gc.MessageTimeoutMs) * time.Millisecond,
		checkpointAfter: time.Duration(gc.CheckpointAfterMs) * time.Millisecond,
		minCheckpoint:   gc.MinCheckpoint,
		maxCheckpoint:   gc.MaxCheckpoint,
		maxSubscribers:  gc.MaxSubscribers,
		resolveLinks:    gc.ResolveLinks,
	}
	for k, v := range strategyNames {
		if v == gc.Strategy {
			s.strategy = k
		}
	}
	g := newGroup(p, gc.Stream, gc.Group, s)
	g.start = gc.Start
	if gc.Filter != nil {
		f, err := makeFilter(gc.Filter.OnEventType, gc.Filter.Prefixes, gc.Filter.Regex, 0, 1)
		if err != nil {
			return nil, fmt.Errorf("esdbtest: persistent subscription %s: %w", g.key, err)
		}
		g.filter, g.filterSpec = f, gc.Filter
	}
	g.checkpoint = p.lastCheckpoint(g)
	g.cursor = g.start
	if g.checkpoint >= 0 {
		g.cursor = g.checkpoint + 1
	}
	return g, nil
}

// lastCheckpoint reads a group's checkpoint stream: the seq after which it resumes, or -1.
func (p *persistentSubs) lastCheckpoint(g *group) int64 {
	l := p.s.log
	l.mu.Lock()
	defer l.mu.Unlock()
	st := l.streams[g.checkpointStream()]
	if st == nil || len(st.events) == 0 {
		return -1
	}
	data := st.events[len(st.events)-1].data
	if g.stream != allStreamName {
		var rev int64
		if err := json.Unmarshal(data, &rev); err != nil {
			return -1
		}
		return rev
	}
	var text string
	var commit, prepare uint64
	if err := json.Unmarshal(data, &text); err != nil {
		return -1
	}
	if _, err := fmt.Sscanf(text, "C:%d/P:%d", &commit, &prepare); err != nil {
		return -1
	}
	i := l.indexAfter(commit, true)
	if i >= len(l.all) || l.all[i].pos != commit {
		return -1
	}
	return int64(i)
}
