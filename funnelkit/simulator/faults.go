package simulator

import (
	"fmt"

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
