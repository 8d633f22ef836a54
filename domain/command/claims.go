package command

import "sync"

// keyLocks serializes, within this process, the webhooks that claim the
// same email address or login for different contacts, so that this
// process does not race itself for a claim. It is an optimisation only:
// what makes one user per address and per login hold is the reservation
// streams' expected versions (reservations.go), which also hold between
// several processes sharing one EventStoreDB, where a lost race costs a
// webhook one more decision (TestTwoNodes_… in multinode_test.go). The
// zero value is ready to use.
type keyLocks struct {
	mu sync.Mutex
	m  map[string]*keyLock
}

type keyLock struct {
	mu   sync.Mutex
	refs int
}

func (k *keyLocks) entry(key string) *keyLock {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.m == nil {
		k.m = map[string]*keyLock{}
	}
	l := k.m[key]
	if l == nil {
		l = &keyLock{}
		k.m[key] = l
	}
	l.refs++
	return l
}

func (k *keyLocks) release(key string, l *keyLock) {
	k.mu.Lock()
	defer k.mu.Unlock()
	l.refs--
	if l.refs == 0 {
		delete(k.m, key)
	}
}

// lock takes key and returns its unlock.
func (k *keyLocks) lock(key string) func() {
	l := k.entry(key)
	l.mu.Lock()
	return func() { l.mu.Unlock(); k.release(key, l) }
}

// tryLock takes key if it is free.
func (k *keyLocks) tryLock(key string) (func(), bool) {
	l := k.entry(key)
	if !l.mu.TryLock() {
		k.release(key, l)
		return nil, false
	}
	return func() { l.mu.Unlock(); k.release(key, l) }, true
}

// claim takes the lock of an email address or login for the rest of this
// attempt. The first lock waits; a further one is only tried, so that two
// attempts never wait on each other (false: someone else holds it).
func (w *work) claim(key string) bool {
	if _, ok := w.held[key]; ok {
		return true
	}
	if w.held == nil {
		w.held = map[string]func(){}
	}
	if len(w.held) == 0 {
		w.held[key] = w.p.locks.lock(key)
		return true
	}
	unlock, ok := w.p.locks.tryLock(key)
	if ok {
		w.held[key] = unlock
	}
	return ok
}

func (w *work) unclaim(key string) {
	if unlock, ok := w.held[key]; ok {
		unlock()
		delete(w.held, key)
	}
}

func (w *work) releaseClaims() {
	for k, unlock := range w.held {
		unlock()
		delete(w.held, k)
	}
}
