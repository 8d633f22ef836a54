package simulator

import (
	"fmt"
	"maps"

	"github.com/usersync/usersync/domain"
	"github.com/usersync/usersync/funnelkit"
)

var endpoints = []string{
	funnelkit.EndpointContact,
	funnelkit.EndpointSearch,
	funnelkit.EndpointTags,
	funnelkit.EndpointSetFields,
}

func (s *Simulator) queue(endpoint string, n int, f fault) {
	known := false
	for _, e := range endpoints {
		known = known || e == endpoint
	}
	if !known {
		panic(fmt.Sprintf("simulator: unknown endpoint %q (want one of %q)", endpoint, endpoints))
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for range n {
		s.faults[endpoint] = append(s.faults[endpoint], f)
	}
}

// FailNext answers the next n requests to endpoint (such as
// funnelkit.EndpointContact, "GET contacts/{id}") with status and a
// WordPress error body, before checking credentials. Faults queue up in the
// order given.
func (s *Simulator) FailNext(endpoint string, n int, status int) {
	if status < 100 || status > 599 {
		panic(fmt.Sprintf("simulator: FailNext with status %d", status))
	}
	s.queue(endpoint, n, fault{status: status})
}

// FailWith answers the next n requests to endpoint with a failure of the
// kind a funnelkit.Client reports as kind:
//
//   - KindEmptyBody: 200 with an empty body (a site without pretty permalinks)
//   - KindHTML: 403 with a CDN challenge page
//   - KindInvalidJSON: 200 with JSON cut short
//   - KindUnreachable: the connection is dropped without an answer (Go's
//     transport may retry a GET once on a reused connection; queue 2 to be sure)
//   - KindAuth, KindNotFound, KindServer, KindClient: 401, 404, 500, 400
//     with a WordPress error body
func (s *Simulator) FailWith(endpoint string, n int, kind funnelkit.Kind) {
	switch kind {
	case funnelkit.KindEmptyBody, funnelkit.KindHTML, funnelkit.KindInvalidJSON, funnelkit.KindUnreachable,
		funnelkit.KindAuth, funnelkit.KindNotFound, funnelkit.KindServer, funnelkit.KindClient:
	default:
		panic(fmt.Sprintf("simulator: FailWith with kind %v", kind))
	}
	s.queue(endpoint, n, fault{kind: kind})
}

// Hang holds the next n requests to endpoint without answering until the
// client gives up (its timeout) or the server started by Start or Listen
// is closed.
func (s *Simulator) Hang(endpoint string, n int) {
	s.queue(endpoint, n, fault{hang: true})
}

// ClearFaults drops every queued fault.
func (s *Simulator) ClearFaults() {
	s.mu.Lock()
	defer s.mu.Unlock()
	clear(s.faults)
}

// Outage is a way for the whole site to fail, for StartOutage.
type Outage int

// Outages StartOutage knows.
const (
	// OutageDown drops every connection without an answer (the client
	// reports funnelkit.KindUnreachable).
	OutageDown Outage = iota + 1
	// OutageSlow holds every request until the client gives up (its
	// timeout; funnelkit.KindUnreachable).
	OutageSlow
	// OutageServer answers 500 with WordPress's critical error
	// (funnelkit.KindServer).
	OutageServer
	// OutageChallenge answers 200 with a CDN challenge page, HTML instead
	// of JSON (funnelkit.KindHTML).
	OutageChallenge
	// OutageAuth answers 401: the Application Password is refused, as
	// when a security plugin blocks Basic auth (funnelkit.KindAuth).
	OutageAuth
)

var outageNames = map[Outage]string{OutageDown: "down", OutageSlow: "slow", OutageServer: "server", OutageChallenge: "challenge", OutageAuth: "auth"}

// String names the outage ("challenge").
func (o Outage) String() string {
	if n, ok := outageNames[o]; ok {
		return n
	}
	return fmt.Sprintf("outage(%d)", int(o))
}

func (o Outage) fault() (fault, bool) {
	switch o {
	case OutageDown:
		return fault{kind: funnelkit.KindUnreachable}, true
	case OutageSlow:
		return fault{hang: true}, true
	case OutageServer:
		return fault{kind: funnelkit.KindServer}, true
	case OutageChallenge:
		return fault{challenge200: true}, true
	case OutageAuth:
		return fault{kind: funnelkit.KindAuth}, true
	}
	return fault{}, false
}

// StartOutage makes every request to a known endpoint fail as o says, after
// any queued faults, until EndOutage. Requests are still counted
// (Requests, RequestsTo, OutageRequests).
func (s *Simulator) StartOutage(o Outage) {
	f, ok := o.fault()
	if !ok {
		panic(fmt.Sprintf("simulator: StartOutage with %v", o))
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.outage = &f
	clear(s.outageCounts)
}

// EndOutage ends the outage StartOutage began: the site answers again.
func (s *Simulator) EndOutage() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.outage = nil
}

// OutageRequests is how many requests the current or last outage failed,
// per contact of the request's path (0 for the requests without one, such
// as GET tags).
func (s *Simulator) OutageRequests() map[domain.ContactID]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return maps.Clone(s.outageCounts)
}
