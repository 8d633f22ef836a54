package main

import (
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	nethttp "net/http"
	"net/http/pprof"
	"os"
	"strings"
	"sync"
	"time"

	wmetrics "github.com/ThreeDotsLabs/watermill/components/metrics"
	"github.com/google/uuid"
	"golang.org/x/term"

	"github.com/usersync/usersync/domain"
	"github.com/usersync/usersync/domain/command"
	"github.com/usersync/usersync/eventstore"
	"github.com/usersync/usersync/eventstore/esdb"
	"github.com/usersync/usersync/eventstore/keystore"
	"github.com/usersync/usersync/eventstore/pipeline"
	"github.com/usersync/usersync/funnelkit"
	"github.com/usersync/usersync/funnelkit/simulator"
	usershttp "github.com/usersync/usersync/http"
	"github.com/usersync/usersync/http/metrics"
	"github.com/usersync/usersync/mail"
	"github.com/usersync/usersync/projections"
)

// readyLag is how many events a view may be behind the head for /readyz,
// on a store with dense positions (the embedded one); on one with gaps
// (EventStoreDB) the views must have reached the head observed
// pipeline.DefaultCaughtUpWindow ago (see pipeline.Lag).
const readyLag = 1000

func serveCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cfg, err := parseServe(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return nil
	}
	if err != nil {
		return err
	}
	log := newLogger(cfg.LogFormat, cfg.LogLevel, stderr)
	app, err := startApp(ctx, cfg, log, stdout)
	if err != nil {
		return explainEnv(err, cfg.fromEnv)
	}
	<-ctx.Done()
	log.Info("shutting down: draining in-flight webhooks")
	return app.shutdown()
}

// app is a running usersync server.
type app struct {
	log         *slog.Logger
	store       storeHandle
	keys        *keystore.Keys
	views       *projections.Views
	pipe        *pipeline.Pipeline
	pipeDone    chan error
	pipeStop    context.CancelFunc
	disp        *command.Dispatcher
	feed        *feedWorker // on EventStoreDB: what brings the webhooks to disp
	returner    *command.PasswordReturner
	welcomer    *command.Welcomer
	servers     []*nethttp.Server
	serveErr    chan error
	addr        string
	wait        time.Duration
	metricsAddr string
	metrics     *metrics.Metrics
	disk        diskGuard
	recovered   chan struct{} // closed once recover has returned
	recoverStop context.CancelFunc
	sim         func()
	removeData  func() error
	once        sync.Once
}

// startApp opens the data directory, starts the pipeline and listening,
// and leaves the recovery of what was queued to the background, once the
// views have caught up (see recover). It returns once the server accepts
// webhooks, however far behind the views are.
func startApp(ctx context.Context, cfg *serveConfig, log *slog.Logger, stdout io.Writer) (_ *app, err error) {
	a := &app{log: log, wait: cfg.Wait}
	defer func() {
		if err != nil {
			_ = a.shutdown()
		}
	}()
	dataDir, removeData, err := resolveData(cfg)
	if err != nil {
		return nil, err
	}
	a.removeData = removeData
	if dataDir != cfg.Data {
		c := *cfg
		c.Data = dataDir
		cfg = &c
	}
	// The reserve is kept on the disk of the directory the data is in
	// (for --demo without --data, its temporary directory).
	a.disk = diskGuard{dir: cfg.Data, reserve: uint64(cfg.DiskReserve), free: freeBytes}
	paths, err := openData(cfg.Data)
	if err != nil {
		return nil, err
	}
	access, admin, fresh, saveSecrets, err := secrets(cfg.Data, cfg.AccessKey, cfg.AdminToken, cfg.Demo)
	if err != nil {
		return nil, err
	}
	policy, err := cfg.policy()
	if err != nil {
		return nil, err
	}
	for _, r := range strings.Split(cfg.Roles, ",") {
		if strings.EqualFold(strings.TrimSpace(r), string(domain.Administrator)) {
			log.Warn("--roles lists administrator, which a webhook never grants: ignored")
		}
	}
	m := metrics.New()
	a.metrics = m
	if a.store, err = openStore(ctx, storeConfig{Store: cfg.Store, Events: paths.events(), OnCommit: m.ObserveCommit}, log); err != nil {
		return nil, err
	}
	store := observedStore{Store: a.store.logStore, m: m}
	if a.keys, err = keystore.Open(ctx, paths.keys()); err != nil {
		return nil, err
	}
	if a.views, err = projections.Open(ctx, paths.views(), projections.WithReceiptRetention(cfg.ReceiptRetention), projections.WithLogger(log)); err != nil {
		return nil, err
	}
	if err := followStore(ctx, a.views, a.store, cfg.Data); err != nil {
		return nil, err
	}
	if err := checkViewsNotAheadOf(ctx, a.store, a.views, cfg.Data, storeReplaced(a.store, cfg.Data)); err != nil {
		return nil, err
	}

	fkCfg := funnelkit.Config{BaseURL: cfg.FunnelKitURL, User: cfg.FunnelKitUser, Password: cfg.FunnelKitPassword, Timeout: cfg.FunnelKitTimeout,
		Observe: func(endpoint string, status int, kind funnelkit.Kind, d time.Duration) {
			m.ObserveFunnelKit(endpoint, status, kind.String(), d)
		}}
	if cfg.Demo {
		sim := simulator.New("demo", "demo app password")
		sim.SampleData()
		url, closeSim := sim.Start()
		a.sim = closeSim
		fkCfg.BaseURL, fkCfg.User, fkCfg.Password = url, "demo", "demo app password"
		if policy.PasswordField == "" {
			policy.PasswordField = "password"
		}
	}
	crm, err := funnelkit.New(fkCfg)
	if err != nil {
		return nil, err
	}
	mailer, err := mail.NewMailer(mail.Config{From: cfg.MailFrom, LoginURL: cfg.LoginURL, SMTPURL: cfg.SMTPURL, Outbox: paths.outbox()})
	if err != nil {
		return nil, err
	}

	retry := domain.Backoff{Initial: cfg.RetryInitial, Max: cfg.RetryMax}
	node, err := loadNodeID(paths.dir)
	if err != nil {
		return nil, err
	}
	procCfg := command.ProcessManagerConfig{Store: store, Checkpoints: a.views, Retry: retry, Log: log, Node: node}
	returnCfg, mailCfg := procCfg, procCfg
	returnCfg.MaxAttempts, mailCfg.MaxAttempts = cfg.ReturnAttempts, cfg.MailAttempts
	returnCfg.OnResult, mailCfg.OnResult = m.PasswordReturn, m.WelcomeEmail
	returnCfg.OnRaceLost = func() { m.RaceLost("password_return") }
	mailCfg.OnRaceLost = func() { m.RaceLost("welcome_email") }
	returnCfg.Concurrency = cfg.Concurrency
	// Several nodes: a claim holds for twice its attempt's effect (the
	// FunnelKit request, the SMTP session) plus the clock skew between
	// nodes (domain.ClaimLease), and a node replaces a password whose key
	// only a silent node holds.
	returnCfg.EffectTimeout, mailCfg.EffectTimeout = cfg.FunnelKitTimeout, mail.DefaultTimeout
	returnCfg.TakeoverAfter = cfg.TakeoverAfter
	hasher, err := keystore.NewHasher(cfg.PasswordHashCost, cfg.PasswordHashWorkers)
	if err != nil {
		return nil, err
	}
	returnCfg.Secrets = keystore.Secrets{Keys: a.keys, Hasher: hasher}
	// The views apply events in batches, all four in one transaction; far
	// behind the log at the start (no views.db), they are first built aside
	// at rebuild speed and swapped in.
	minBehind := uint64(projections.DefaultCatchUpMinBehind)
	if !pipeline.Dense(a.store) {
		// EventStoreDB's positions are byte offsets, not counts.
		minBehind = projections.DefaultCatchUpMinBehindBytes
	}
	minBehind = cmp.Or(cfg.catchUpMinBehind, minBehind)
	viewsBatch := a.views.CatchUpBatch(projections.CatchUp{Log: a.store, MinBehind: minBehind})
	views := []pipeline.BatchConsumer{viewsBatch}
	if cfg.wrapViews != nil {
		for i, v := range views {
			views[i] = cfg.wrapViews(v)
		}
	}
	var consumers []pipeline.Consumer
	processes := map[string]interface{ Current() uint64 }{}
	welcomer, err := command.NewWelcomer(mailCfg, mailer)
	if err != nil {
		return nil, err
	}
	a.welcomer = welcomer
	// A process manager as far behind as the views waits while they are
	// built aside (afterViews).
	held := func(c pipeline.Consumer) pipeline.Consumer {
		return &afterViews{Consumer: c, views: viewsBatch, head: a.store.Head, minBehind: minBehind}
	}
	consumers, processes[welcomer.Name()] = append(consumers, acting{held(welcomer), domain.TypeUserCreated, ""}), welcomer
	if policy.PasswordField != "" {
		if a.returner, err = command.NewPasswordReturner(returnCfg, crm, a.keys); err != nil {
			return nil, err
		}
		consumers, processes[a.returner.Name()] = append(consumers, acting{held(a.returner), domain.TypePasswordIssued, domain.TypePasswordReplaced}), a.returner
	}
	wm := wmetrics.NewPrometheusMetricsBuilder(m.Registry, "usersync", "watermill")
	a.pipe, err = pipeline.New(pipeline.Config{
		Store: a.store, Parker: a.views, Log: log, Batch: views, Lag: readyLag,
		Instrument: wm.AddPrometheusRouterMetrics, OnPark: m.Parked,
		OnRead: m.PipelineRead, OnBatch: m.PipelineBatch,
	}, consumers...)
	if err != nil {
		return nil, err
	}
	m.Watch(metrics.Source{Views: a.views, Log: a.store, Logger: log, Dense: pipeline.Dense(a.store),
		StoreKind: a.store.kind, StoreUp: a.store.up, Lag: viewsLag(a.pipe), Consumers: func(context.Context) map[string]uint64 {
			out := make(map[string]uint64, len(processes))
			for name, p := range processes {
				out[name] = p.Current()
			}
			return out
		}})
	pipeCtx, stop := context.WithCancel(context.Background())
	a.pipeStop, a.pipeDone = stop, make(chan error, 1)
	go func() { a.pipeDone <- a.pipe.Run(pipeCtx) }()
	select {
	case <-a.pipe.Running():
	case err := <-a.pipeDone:
		return nil, fmt.Errorf("start pipeline: %w", err)
	}

	proc, err := command.NewProcessWebhook(command.ProcessWebhookConfig{
		Policy: policy, Store: store, CRM: crm,
		CRMConcurrency: cfg.FunnelKitConcurrency, ContactCache: cfg.ContactCache,
		Secrets:    keystore.Secrets{Keys: a.keys, Hasher: hasher},
		NewID:      func() string { return uuid.NewString() },
		Retry:      retry,
		OnRaceLost: m.RaceLost, OnCRMReadWasted: m.CRMReadWasted,
	})
	if err != nil {
		return nil, err
	}
	a.disp, err = command.NewDispatcher(proc, command.DispatcherConfig{
		Concurrency: cfg.ProcessingConcurrency,
		OnError: func(id domain.ContactID, err error) {
			if errors.Is(err, command.ErrRacesLost) {
				log.Warn("processing a contact lost every race to other writers; left for a later attempt", "contact_id", id, "err", err)
				return
			}
			log.Error("processing a webhook failed; retrying", "contact_id", id, "err", err)
		},
	})
	if err != nil {
		return nil, err
	}
	// On EventStoreDB the webhooks reach the dispatcher through the work
	// feed shared by every node on the store, and a synchronous answer
	// waits on this node's views (docs/scaling.md, "Several nodes").
	var queue usershttp.Queue = a.disp
	var outcomes usershttp.Outcomes
	if es, ok := a.store.logStore.(*esdb.Store); ok {
		sweep := staleSweep{Open: a.views.Webhooks.Open, After: cfg.TakeoverAfter, RetryMax: cfg.RetryMax}
		if a.feed, err = startFeedWorker(ctx, es, a.disp, sweep, log, m.WorkFeed()); err != nil {
			return nil, a.store.redact(err)
		}
		queue, outcomes = feedQueue{}, viewOutcomes{views: a.views, store: store}
	}
	var authFailures *usershttp.FailureLimiter
	if cfg.AuthFailRate > 0 {
		if authFailures, err = usershttp.NewFailureLimiter(usershttp.FailureLimiterConfig{Rate: cfg.AuthFailRate, Burst: cfg.AuthFailBurst}); err != nil {
			return nil, err
		}
	}
	srv, err := usershttp.New(usershttp.Config{
		AuthFailures: authFailures, Refused: m.Refused,
		AccessKey: access, AdminToken: admin, Wait: cfg.Wait,
		Store: store, Views: a.views, Queue: queue, Outcomes: outcomes, Log: log,
		NewID:   func() string { return uuid.Must(uuid.NewV7()).String() },
		Ready:   a.ready,
		Admit:   a.disk.check,
		Metrics: m.Handler(),
		Retries: retries{returner: a.returner, welcomer: a.welcomer},
		Replay: func(ctx context.Context, pe domain.ParkedEvent) error {
			return a.pipe.Replay(ctx, a.store, pe)
		},
		WebhookDecorators: []usershttp.Decorator{usershttp.ObserveWebhooks(m.ObserveWebhook)},
		VerifyDir:         paths.dir, Retention: cfg.ReceiptRetention,
		OnRebuild: func() func(projections.Progress, bool) {
			var last uint64
			return func(p projections.Progress, done bool) {
				if p.Events < last {
					last = 0
				}
				m.RebuildProgress(p, &last, done)
			}
		}(),
	})
	if err != nil {
		return nil, err
	}
	a.serveErr = make(chan error, 3)
	ln, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("listen on --addr %s: %w", cfg.Addr, err)
	}
	a.addr = ln.Addr().String()
	var mln, pln net.Listener
	if cfg.PprofAddr != "" {
		if pln, err = net.Listen("tcp", cfg.PprofAddr); err != nil {
			ln.Close()
			return nil, fmt.Errorf("listen on --pprof-addr %s: %w", cfg.PprofAddr, err)
		}
	}
	if cfg.MetricsAddr != "" {
		if mln, err = net.Listen("tcp", cfg.MetricsAddr); err != nil {
			ln.Close()
			if pln != nil {
				pln.Close()
			}
			return nil, fmt.Errorf("listen on --metrics-addr %s: %w", cfg.MetricsAddr, err)
		}
		a.metricsAddr = mln.Addr().String()
	}
	// Generated secrets are stored only now that nothing can fail any more,
	// and printed right after (docs/configuration.md, "First start").
	if err := saveSecrets(); err != nil {
		ln.Close()
		for _, l := range []net.Listener{mln, pln} {
			if l != nil {
				l.Close()
			}
		}
		return nil, err
	}
	if pln != nil {
		ps := &nethttp.Server{Handler: pprofMux(), ReadHeaderTimeout: 10 * time.Second}
		a.servers = append(a.servers, ps)
		go func() { a.serveErr <- ps.Serve(pln) }()
	}
	if mln != nil {
		mux := nethttp.NewServeMux()
		mux.Handle("/metrics", m.Handler())
		ms := &nethttp.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		a.servers = append(a.servers, ms)
		go func() { a.serveErr <- ms.Serve(mln) }()
	}
	hs := newWebServer(srv)
	a.servers = append(a.servers, hs)
	go func() { a.serveErr <- hs.Serve(ln) }()
	// Open webhooks and pending password returns are picked up once the
	// views have caught up with the log, in the background: the server
	// records webhooks meanwhile and /readyz says how far behind it is.
	head, err := a.store.Head(ctx)
	if err != nil {
		return nil, err
	}
	recoverCtx, recoverStop := context.WithCancel(context.Background())
	a.recovered, a.recoverStop = make(chan struct{}), recoverStop
	go func() {
		defer close(a.recovered)
		a.recover(recoverCtx, head)
	}()
	log.Info("usersync is listening", "addr", a.addr, "data", cfg.Data, "store", a.store.kind, "store_at", a.store.where, "funnelkit", redactedURL(fkCfg.BaseURL), "password_return", policy.PasswordField != "", "mail", mailer.Transport())
	printWelcome(stdout, a.addr, fresh, cfg.Demo, cfg.Data, removeData != nil)
	return a, nil
}

// Timeouts of the webhook and API listener: a client that sends its
// headers slower than readHeaderTimeout, or its whole request slower than
// readTimeout, is dropped (slow-loris); an idle keep-alive connection is
// closed after idleTimeout.
const (
	readHeaderTimeout = 10 * time.Second
	readTimeout       = 30 * time.Second
	idleTimeout       = 2 * time.Minute
)

// pprofMux serves Go's profiler for --pprof-addr.
func pprofMux() *nethttp.ServeMux {
	mux := nethttp.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return mux
}

// newWebServer is the http.Server of --addr.
func newWebServer(h nethttp.Handler) *nethttp.Server {
	return &nethttp.Server{Handler: h, ReadHeaderTimeout: readHeaderTimeout, ReadTimeout: readTimeout, IdleTimeout: idleTimeout}
}

// checkViewsNotAhead refuses views and process managers that handled events
// the store does not have (events.db replaced, or restored from an older
// backup): started as they are, they would skip every new event up to
// their old checkpoint.
func checkViewsNotAhead(ctx context.Context, store interface {
	Head(context.Context) (uint64, error)
}, views *projections.Views, data string) error {
	return checkViewsNotAheadOf(ctx, store, views, data,
		"events.db was replaced or restored from an older backup; run usersync rebuild --data "+data+", then start again")
}

// storeReplaced is what checkViewsNotAheadOf says of h when the views are
// ahead of it.
func storeReplaced(h storeHandle, data string) string {
	if h.kind == storeFile {
		return "events.db was replaced or restored from an older backup; run usersync rebuild --data " + data + ", then start again"
	}
	return "the " + h.kind + " store " + h.where + " is another one than these views were built from, or was restored from an older backup; " +
		"run usersync rebuild --data " + data + " with the same --store, then start again"
}

// checkViewsNotAheadOf is checkViewsNotAhead saying replaced of the store.
func checkViewsNotAheadOf(ctx context.Context, store interface {
	Head(context.Context) (uint64, error)
}, views *projections.Views, data, replaced string) error {
	head, err := store.Head(ctx)
	if err != nil {
		return err
	}
	for _, name := range views.Names() {
		pos, err := views.Position(name)
		if err != nil {
			return err
		}
		if pos > head {
			return fmt.Errorf("view %s in %s has applied events up to position %d, but the event store ends at %d: %s",
				name, views.Path(), pos, head, replaced)
		}
	}
	for _, name := range command.ProcessNames() {
		pos, err := views.Checkpoint(ctx, name)
		if err != nil {
			return err
		}
		if pos > head {
			return fmt.Errorf("process %s in %s has handled events up to position %d, but the event store ends at %d: %s",
				name, views.Path(), pos, head, replaced)
		}
	}
	return nil
}

// recover waits for the views to catch up with head, the end of the log at
// the start, then queues every webhook that was recorded but not finished
// before the last stop and resumes the pending password returns and
// welcome mails. It runs in the background until done or ctx is cancelled
// (at shutdown); a failure is logged and tried again.
func (a *app) recover(ctx context.Context, head uint64) {
	if err := a.views.WaitAll(ctx, head); err != nil {
		return // stopping before the views caught up
	}
	for attempt := 1; ; attempt++ {
		err := a.recoverOnce(ctx)
		if err == nil || ctx.Err() != nil {
			return
		}
		a.log.Error("recovery after the start failed; trying again", "err", err)
		t := time.NewTimer(domain.Backoff{Initial: time.Second, Max: time.Minute}.Delay(attempt))
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return
		}
	}
}

// recoverOnce queues the contacts of the open webhooks and resumes the
// pending password returns and welcome mails. All are idempotent, so it
// may run again.
func (a *app) recoverOnce(ctx context.Context) error {
	if a.feed != nil {
		// The work feed redelivers every item not acked, and an item is
		// acked only once its contact has no open webhook: queueing the
		// open webhooks here too would only process them on this node
		// that the feed may have given to another.
		return a.resumeEffects(ctx)
	}
	open, err := a.views.Webhooks.Open(ctx)
	if err != nil {
		return fmt.Errorf("list the open webhooks: %w", err)
	}
	seen := map[domain.ContactID]bool{}
	for _, w := range open {
		if w.ContactID != 0 && !seen[w.ContactID] {
			seen[w.ContactID] = true
			a.disp.Notify(w.ContactID)
		}
	}
	if len(open) > 0 {
		a.log.Info("resuming webhooks recorded before the last stop", "webhooks", len(open), "contacts", len(seen))
	}
	return a.resumeEffects(ctx)
}

// resumeEffects resumes the pending password returns and welcome mails.
func (a *app) resumeEffects(ctx context.Context) error {
	return errors.Join(a.resumeReturns(ctx), a.resumeMails(ctx))
}

// resumeMails resumes the pending welcome mails: this node's checkpoint
// may be past their UserCreated (a watch of another node's claim ended by
// a restart).
func (a *app) resumeMails(ctx context.Context) error {
	if a.welcomer == nil {
		return nil
	}
	rows, err := a.views.Welcome.List(ctx, projections.WelcomePending)
	if err != nil {
		return fmt.Errorf("list the pending welcome mails: %w", err)
	}
	pending := make([]command.PendingWelcome, 0, len(rows))
	for _, r := range rows {
		pending = append(pending, command.PendingWelcome{ContactID: r.ContactID, UserID: r.UserID})
	}
	if err := a.welcomer.Resume(ctx, pending); err != nil {
		return fmt.Errorf("resume the pending welcome mails: %w", err)
	}
	return nil
}

// resumeReturns resumes the pending password returns.
func (a *app) resumeReturns(ctx context.Context) error {
	if a.returner == nil {
		return nil
	}
	rows, err := a.views.Passwords.List(ctx, projections.PasswordPending)
	if err != nil {
		return fmt.Errorf("list the pending password returns: %w", err)
	}
	pending := make([]command.PendingReturn, 0, len(rows))
	for _, r := range rows {
		pending = append(pending, command.PendingReturn{ContactID: r.ContactID, KeyID: r.KeyID})
	}
	if err := a.returner.Resume(ctx, pending); err != nil {
		return fmt.Errorf("resume the pending password returns: %w", err)
	}
	return nil
}

// ready is /readyz: the store answers and can take appends, the data disk
// has its reserve, and the views are close to the head. FunnelKit being
// down does not make it unready: webhooks are still recorded.
func (a *app) ready(ctx context.Context) error {
	if err := a.store.checkPing(ctx); err != nil {
		return fmt.Errorf("event store unreachable: %w", a.store.redact(err))
	}
	if err := a.disk.check(ctx); err != nil {
		return err
	}
	if a.store.writable != nil {
		if err := a.store.writable(ctx); err != nil {
			return a.store.redact(err)
		}
	}
	lag, err := a.pipe.Lag(ctx)
	if err != nil {
		return a.store.redact(err)
	}
	if !lag.CaughtUp {
		return fmt.Errorf("views catching up: %s", lag)
	}
	return nil
}

// viewsLag is the views' lag for the metrics (pipeline.Lag).
func viewsLag(p *pipeline.Pipeline) func(context.Context) (metrics.ViewsLag, error) {
	return func(ctx context.Context) (metrics.ViewsLag, error) {
		lag, err := p.Lag(ctx)
		return metrics.ViewsLag{Events: lag.Events, Behind: lag.Behind, Done: lag.Done, CaughtUp: lag.CaughtUp}, err
	}
}

// shutdown drains: stop taking requests (letting answers in flight finish),
// finish the webhooks being processed, stop the pipeline, close the files.
func (a *app) shutdown() error {
	var errs []error
	a.once.Do(func() {
		// Answers in flight may wait up to --wait for their webhook.
		httpCtx, cancel := context.WithTimeout(context.Background(), a.wait+5*time.Second)
		defer cancel()
		for _, s := range a.servers {
			if err := s.Shutdown(httpCtx); err != nil {
				errs = append(errs, fmt.Errorf("stop HTTP server: %w", err))
			}
		}
		// Then the webhooks being processed finish (what is queued stays
		// recorded for the next start).
		// Stop the recovery before the dispatcher it queues webhooks on.
		if a.recovered != nil {
			a.recoverStop()
			<-a.recovered
		}
		drainCtx, cancelDrain := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancelDrain()
		if a.feed != nil {
			a.feed.stopTaking()
		}
		if a.disp != nil {
			if err := a.disp.Close(drainCtx); err != nil {
				errs = append(errs, fmt.Errorf("drain webhooks: %w", err))
			}
		}
		// After the dispatcher: the items of what it finished are acked.
		if a.feed != nil {
			if err := a.feed.close(); err != nil {
				errs = append(errs, fmt.Errorf("leave the work feed: %w", err))
			}
		}
		if a.pipe != nil {
			a.pipeStop()
			if err := <-a.pipeDone; err != nil {
				errs = append(errs, fmt.Errorf("stop pipeline: %w", err))
			}
		}
		// After the pipeline: no Handle can start a return any more.
		if a.returner != nil {
			a.returner.Stop()
		}
		if a.welcomer != nil {
			a.welcomer.Stop()
		}
		if a.views != nil {
			errs = append(errs, a.views.Close())
		}
		if a.keys != nil {
			errs = append(errs, a.keys.Close())
		}
		if a.store.logStore != nil {
			errs = append(errs, a.store.Close())
		}
		if a.sim != nil {
			a.sim()
		}
		// Last, once every file in it is closed.
		if a.removeData != nil {
			errs = append(errs, a.removeData())
		}
	})
	return errors.Join(errs...)
}

func newLogger(format, level string, w io.Writer) *slog.Logger {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		lv = slog.LevelInfo
	}
	opts := &slog.HandlerOptions{Level: lv}
	if format == "auto" {
		format = "json"
		if f, ok := w.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
			format = "text"
		}
	}
	if format == "text" {
		return slog.New(slog.NewTextHandler(w, opts))
	}
	return slog.New(slog.NewJSONHandler(w, opts))
}

func redactedURL(raw string) string {
	if i := strings.Index(raw, "@"); i >= 0 {
		if j := strings.Index(raw, "://"); j >= 0 && j < i {
			return raw[:j+3] + "[redacted]@" + raw[i+1:]
		}
	}
	return raw
}

// acting makes a process manager pipeline.Selective: it acts on events of
// one type and only moves its checkpoint for the others (see its Handle),
// so the pipeline hands it those directly, without a Watermill message.
type acting struct {
	pipeline.Consumer
	acts, alsoActs string
}

// Wants reports whether the process manager acts on events of type t.
func (a acting) Wants(t string) bool { return t == a.acts || a.alsoActs != "" && t == a.alsoActs }

// observedStore counts appends and their latency.
type observedStore struct {
	eventstore.Store
	m *metrics.Metrics
}

// DensePositions forwards the store's answer (see storeHandle's).
func (s observedStore) DensePositions() bool { return pipeline.Dense(s.Store) }

func (s observedStore) Append(ctx context.Context, stream string, expected domain.ExpectedVersion, events ...domain.NewEvent) (domain.AppendResult, error) {
	start := time.Now()
	res, err := s.Store.Append(ctx, stream, expected, events...)
	s.m.ObserveAppend(events, time.Since(start), err)
	return res, err
}
