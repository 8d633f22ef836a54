package esdbtest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/EventStore/EventStore-Client-Go/v4/protos/gossip"
	"github.com/EventStore/EventStore-Client-Go/v4/protos/persistent"
	"github.com/EventStore/EventStore-Client-Go/v4/protos/serverfeatures"
	"github.com/EventStore/EventStore-Client-Go/v4/protos/streams"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// DefaultMaxAppendSize is the real server's default append size limit (1 MiB).
const DefaultMaxAppendSize = 1 << 20

// DefaultIDCacheSize is how many recent event ids the stand-in remembers for Any /
// stream_exists idempotency (the real server's cache is 8 MiB of ids, in memory only).
const DefaultIDCacheSize = 100_000

// ServerVersion is the version GetSupportedMethods reports (numeric, as the client requires).
const ServerVersion = "24.10.0"

// Options configure a stand-in. The zero value is usable.
type Options struct {
	// Addr is where to listen; default "127.0.0.1:0" (a free port). Only loopback addresses
	// are accepted unless AllowRemote is set.
	Addr string
	// Logger receives a debug line per call and an info line when listening; default: discard.
	Logger *slog.Logger
	// MaxAppendSize is the server's append size limit; default 1 MiB like the real server.
	MaxAppendSize int
	// IDCacheSize is how many recent event ids Any / stream_exists appends are checked
	// against (a miss writes duplicates, as on the real server); default DefaultIDCacheSize.
	// A negative value disables the cache.
	IDCacheSize int
	// AllowRemote permits a non-loopback Addr (the command's --allow-remote).
	AllowRemote bool
	// DataFile, if set, keeps the log in this append-only file (JSON lines) and reloads it at
	// Start, with the persistent subscription groups (resuming after their checkpoints); the
	// id cache starts empty, as after a real node's restart. Default: memory only.
	DataFile string
}

// Server is a running stand-in. Its methods are safe for concurrent use.
type Server struct {
	opts   Options
	logger *slog.Logger
	log    *eventLog
	ps     *persistentSubs

	mu          sync.Mutex
	addr        string
	grpcServer  *grpc.Server
	listener    net.Listener
	conns       map[net.Conn]struct{}
	closed      bool
	stopped     bool
	drop        chan struct{} // closed by DropSubscriptions (and Stop) and replaced
	notLeader   int
	unavailable bool
	denied      bool
	latency     time.Duration
	loseAppends int
	appends     int
}

// Start runs a stand-in on opts.Addr until Close.
func Start(opts Options) (*Server, error) {
	if opts.Addr == "" {
		opts.Addr = "127.0.0.1:0"
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if opts.MaxAppendSize <= 0 {
		opts.MaxAppendSize = DefaultMaxAppendSize
	}
	if opts.IDCacheSize == 0 {
		opts.IDCacheSize = DefaultIDCacheSize
	}
	if err := checkLoopback(opts.Addr, opts.AllowRemote); err != nil {
		return nil, err
	}
	s := &Server{
		opts:   opts,
		logger: opts.Logger,
		log:    newEventLog(opts.IDCacheSize),
		conns:  make(map[net.Conn]struct{}),
		drop:   make(chan struct{}),
	}
	s.ps = newPersistentSubs(s)
	if opts.DataFile != "" {
		if err := s.log.openFile(opts.DataFile); err != nil {
			return nil, err
		}
		if err := s.ps.load(); err != nil {
			s.ps.close()
			return nil, errors.Join(err, s.log.closeFile())
		}
	}
	s.log.mu.Lock()
	s.log.writeEpochLocked()
	s.log.mu.Unlock()
	if err := s.listen(opts.Addr); err != nil {
		s.ps.close()
		return nil, errors.Join(err, s.log.closeFile())
	}
	return s, nil
}

// New starts a stand-in for a test and closes it in t.Cleanup (fails the test on error).
func New(t testing.TB) *Server {
	t.Helper()
	s, err := Start(Options{})
	if err != nil {
		t.Fatalf("esdbtest: start the stand-in: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("esdbtest: close the stand-in: %v", err)
		}
	})
	return s
}

// checkLoopback refuses an address that is not on a loopback interface unless allowed.
func checkLoopback(addr string, allowRemote bool) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("esdbtest: address %q: want host:port (e.g. 127.0.0.1:2113): %w", addr, err)
	}
	if allowRemote {
		return nil
	}
	if host == "localhost" {
		return nil
	}
	ip := net.ParseIP(host)
	if ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("esdbtest: address %q is not a loopback address; the stand-in has no authentication, so listen on 127.0.0.1 (or allow remote access explicitly)", addr)
	}
	return nil
}

// listen binds addr and serves on it. Callers hold no lock.
func (s *Server) listen(addr string) error {
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("esdbtest: listen on %s: %w", addr, err)
	}
	gs := grpc.NewServer(
		grpc.KeepaliveEnforcementPolicy(KeepalivePolicy()),
		// Room for one message bigger than the append limit, so that it is refused by the
		// limit (as the real server does) and not by the transport.
		grpc.MaxRecvMsgSize(max(16<<20, 2*s.opts.MaxAppendSize)),
		grpc.UnaryInterceptor(s.unaryFaults),
		grpc.StreamInterceptor(s.streamFaults),
	)
	streams.RegisterStreamsServer(gs, &streamsService{s: s})
	persistent.RegisterPersistentSubscriptionsServer(gs, &persistentService{s: s})
	serverfeatures.RegisterServerFeaturesServer(gs, &featuresService{})
	gossip.RegisterGossipServer(gs, &gossipService{s: s})

	s.mu.Lock()
	s.addr = lis.Addr().String()
	s.grpcServer = gs
	s.listener = lis
	s.stopped = false
	s.mu.Unlock()

	go func() {
		// Serve returns when the server stops; nothing to report then.
		_ = gs.Serve(&trackingListener{Listener: lis, s: s})
	}()
	s.logger.Info("esdb stand-in listening", "addr", s.addr)
	return nil
}

// KeepalivePolicy is the stand-in's keepalive enforcement: the client pings every 10 s
// without streams, which a default grpc-go server answers with GOAWAY too_many_pings.
func KeepalivePolicy() keepalive.EnforcementPolicy {
	return keepalive.EnforcementPolicy{MinTime: 5 * time.Second, PermitWithoutStream: true}
}

// Addr is "127.0.0.1:PORT".
func (s *Server) Addr() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.addr
}

// ConnString is the client connection string for this stand-in ("esdb://127.0.0.1:PORT?tls=false").
func (s *Server) ConnString() string {
	return "esdb://" + s.Addr() + "?tls=false"
}

// Close stops the stand-in for good.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()
	s.stopServing()
	s.ps.close()
	return s.log.closeFile()
}

// Stop stops listening and drops everything in flight; the data is kept for Restart.
func (s *Server) Stop() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return errors.New("esdbtest: stop: the stand-in is closed")
	}
	s.mu.Unlock()
	s.stopServing()
	return nil
}

func (s *Server) stopServing() {
	s.mu.Lock()
	gs := s.grpcServer
	already := s.stopped
	s.stopped = true
	s.mu.Unlock()
	if already || gs == nil {
		return
	}
	s.DropSubscriptions()
	gs.Stop()
	s.ps.disconnectAll()
}

// Restart listens again on the same address with the same data. Like a restarted real node,
// it has forgotten the id cache, and persistent subscriptions resume from their checkpoints.
func (s *Server) Restart() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return errors.New("esdbtest: restart: the stand-in is closed")
	}
	addr := s.addr
	running := !s.stopped
	s.mu.Unlock()
	if running {
		s.stopServing()
	}
	s.log.mu.Lock()
	s.log.cache.reset()
	s.log.writeEpochLocked()
	s.log.mu.Unlock()
	s.ps.restart()
	return s.listen(addr)
}

// DropSubscriptions ends every open subscription (catch-up and persistent) with an error; the
// client sees SubscriptionDropped.
func (s *Server) DropSubscriptions() {
	s.mu.Lock()
	close(s.drop)
	s.drop = make(chan struct{})
	s.mu.Unlock()
}

// dropped is the channel that closes at the next DropSubscriptions.
func (s *Server) dropped() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.drop
}

// NotLeader makes the next n calls (of any method but GetSupportedMethods/Gossip) answer
// not-leader: gRPC NotFound with trailers exception=not-leader and leader-endpoint-host/port
// pointing at this server, so the client reconnects here and its next call succeeds.
func (s *Server) NotLeader(n int) {
	s.mu.Lock()
	s.notLeader = n
	s.mu.Unlock()
}

// SetUnavailable makes every call (but GetSupportedMethods/Gossip) answer gRPC Unavailable while on.
func (s *Server) SetUnavailable(on bool) {
	s.mu.Lock()
	s.unavailable = on
	s.mu.Unlock()
}

// SetAccessDenied makes every call (but GetSupportedMethods/Gossip) answer gRPC
// PermissionDenied "Access Denied" while on, as the real server answers a user its ACLs do not
// allow (reading $all needs $admins by default) or a call without credentials on a secure node.
func (s *Server) SetAccessDenied(on bool) {
	s.mu.Lock()
	s.denied = on
	s.mu.Unlock()
}

// SetLatency delays every answer by d (0 turns it off).
func (s *Server) SetLatency(d time.Duration) {
	s.mu.Lock()
	s.latency = d
	s.mu.Unlock()
}

// CloseConnections closes every client connection at the transport; the client sees
// "transport is closing" and reconnects on its next call.
func (s *Server) CloseConnections() {
	s.mu.Lock()
	conns := make([]net.Conn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	for _, c := range conns {
		_ = c.Close()
	}
}

// LoseAppendAnswers makes the next n appends commit and then answer gRPC Unavailable (the
// answer is lost; the events are in the log).
func (s *Server) LoseAppendAnswers(n int) {
	s.mu.Lock()
	s.loseAppends = n
	s.mu.Unlock()
}

// ForgetEventIDs empties the id cache, as a real node's restart or cache eviction does: an
// Any / stream_exists retry of an earlier append then writes duplicates.
func (s *Server) ForgetEventIDs() {
	s.log.mu.Lock()
	s.log.cache.reset()
	s.log.mu.Unlock()
}

// Head is the commit position of the last event in $all (0 when empty).
func (s *Server) Head() uint64 {
	s.log.mu.Lock()
	defer s.log.mu.Unlock()
	if len(s.log.all) == 0 {
		return 0
	}
	return s.log.all[len(s.log.all)-1].pos
}

// StreamLen is the number of events ever written to a stream (a soft delete does not remove
// them; a tombstone is not counted).
func (s *Server) StreamLen(stream string) int {
	s.log.mu.Lock()
	defer s.log.mu.Unlock()
	if st := s.log.streams[stream]; st != nil {
		return len(st.events)
	}
	return 0
}

// Appends is the number of Append calls that reached the server, whatever their answer.
func (s *Server) Appends() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.appends
}

// faultsExempt are the methods faults never touch, so that connecting keeps working.
func faultsExempt(method string) bool {
	return method == serverfeatures.ServerFeatures_GetSupportedMethods_FullMethodName ||
		method == gossip.Gossip_Read_FullMethodName
}

// fault is the error the next call must answer with, if any, plus the latency to apply first.
func (s *Server) fault(method string) (time.Duration, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if method == streams.Streams_Append_FullMethodName {
		s.appends++
	}
	if faultsExempt(method) {
		return s.latency, nil
	}
	if s.unavailable {
		return s.latency, status.Error(codes.Unavailable, "esdb stand-in: unavailable (fault injected)")
	}
	if s.denied {
		return s.latency, status.Error(codes.PermissionDenied, "Access Denied")
	}
	if s.notLeader > 0 {
		s.notLeader--
		return s.latency, status.Error(codes.NotFound, "Leader info available")
	}
	return s.latency, nil
}

func (s *Server) notLeaderTrailer() metadata.MD {
	host, port, _ := net.SplitHostPort(s.Addr())
	return metadata.Pairs("exception", "not-leader", "leader-endpoint-host", host, "leader-endpoint-port", port)
}

func wait(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return status.FromContextError(ctx.Err()).Err()
	}
}

func (s *Server) unaryFaults(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	latency, err := s.fault(info.FullMethod)
	if werr := wait(ctx, latency); werr != nil {
		return nil, werr
	}
	if err != nil {
		if status.Code(err) == codes.NotFound {
			_ = grpc.SetTrailer(ctx, s.notLeaderTrailer())
		}
		s.logger.Debug("esdb stand-in call", "method", info.FullMethod, "fault", err)
		return nil, err
	}
	resp, err := handler(ctx, req)
	s.logger.Debug("esdb stand-in call", "method", info.FullMethod, "code", status.Code(err).String())
	return resp, err
}

func (s *Server) streamFaults(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	latency, err := s.fault(info.FullMethod)
	if werr := wait(ss.Context(), latency); werr != nil {
		return werr
	}
	if err == nil {
		err := handler(srv, ss)
		s.logger.Debug("esdb stand-in call", "method", info.FullMethod, "code", status.Code(err).String())
		return err
	}
	// Read what the client sends before answering, as the real server does: a server that
	// answers before reading the client's stream makes the client see EOF without trailers.
	switch info.FullMethod {
	case streams.Streams_Append_FullMethodName:
		for i := 0; i < 1<<20; i++ {
			if rerr := ss.RecvMsg(new(streams.AppendReq)); rerr != nil {
				break
			}
		}
	case persistent.PersistentSubscriptions_Read_FullMethodName:
		_ = ss.RecvMsg(new(persistent.ReadReq))
	}
	if status.Code(err) == codes.NotFound {
		ss.SetTrailer(s.notLeaderTrailer())
	}
	s.logger.Debug("esdb stand-in call", "method", info.FullMethod, "fault", err)
	return err
}

// trackingListener records the accepted connections so CloseConnections can close them.
type trackingListener struct {
	net.Listener
	s *Server
}

func (l *trackingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	tc := &trackedConn{Conn: c, s: l.s}
	l.s.mu.Lock()
	l.s.conns[tc] = struct{}{}
	l.s.mu.Unlock()
	return tc, nil
}

type trackedConn struct {
	net.Conn
	s    *Server
	once sync.Once
}

func (c *trackedConn) Close() error {
	c.once.Do(func() {
		c.s.mu.Lock()
		delete(c.s.conns, c)
		c.s.mu.Unlock()
	})
	return c.Conn.Close()
}

// featuresService answers GetSupportedMethods like a 24.10 node: numeric version, and the
// persistent subscription methods with feature "all" so the client enables them for $all.
type featuresService struct {
	serverfeatures.UnimplementedServerFeaturesServer
}

func (featuresService) GetSupportedMethods(context.Context, *sharedEmpty) (*serverfeatures.SupportedMethods, error) {
	const ps = "event_store.client.persistent_subscriptions.persistentsubscriptions"
	const st = "event_store.client.streams.streams"
	return &serverfeatures.SupportedMethods{
		EventStoreServerVersion: ServerVersion,
		Methods: []*serverfeatures.SupportedMethod{
			{ServiceName: st, MethodName: "read"},
			{ServiceName: st, MethodName: "append"},
			{ServiceName: st, MethodName: "delete"},
			{ServiceName: st, MethodName: "tombstone"},
			{ServiceName: ps, MethodName: "create", Features: []string{"stream", "all"}},
			{ServiceName: ps, MethodName: "read", Features: []string{"stream", "all"}},
			{ServiceName: "event_store.client.gossip.gossip", MethodName: "read"},
			{ServiceName: "event_store.client.server_features.serverfeatures", MethodName: "getsupportedmethods"},
		},
	}, nil
}

// gossipService answers Gossip/Read with one member: this server, leader, alive.
type gossipService struct {
	gossip.UnimplementedGossipServer
	s *Server
}

func (g *gossipService) Read(context.Context, *sharedEmpty) (*gossip.ClusterInfo, error) {
	host, portStr, _ := net.SplitHostPort(g.s.Addr())
	port, _ := strconv.Atoi(portStr)
	return &gossip.ClusterInfo{Members: []*gossip.MemberInfo{{
		InstanceId:   protoUUID(instanceID),
		TimeStamp:    time.Now().UnixNano() / 100,
		State:        gossip.MemberInfo_Leader,
		IsAlive:      true,
		HttpEndPoint: &gossip.EndPoint{Address: host, Port: uint32(port)},
	}}}, nil
}
