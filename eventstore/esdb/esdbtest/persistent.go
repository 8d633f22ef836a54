package esdbtest

import (
	"github.com/EventStore/EventStore-Client-Go/v4/protos/persistent"
)

type persistentSubs struct{ s *Server }

func newPersistentSubs(s *Server) *persistentSubs { return &persistentSubs{s: s} }
func (p *persistentSubs) disconnectAll()         {}
func (p *persistentSubs) restart()               {}

type persistentService struct {
	persistent.UnimplementedPersistentSubscriptionsServer
	s *Server
}
