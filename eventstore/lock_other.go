//go:build !unix

package eventstore

import (
	"errors"
	"fmt"
	"os"
)

// lockFile creates name exclusively; on systems without flock(2) a stale
// lock file left by a crash must be removed by hand.
func lockFile(name string) (*os.File, error) {
	f, err := os.OpenFile(name, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
	if errors.Is(err, os.ErrExist) {
		return nil, fmt.Errorf("%w (lock file %s exists)", ErrInUse, name)
	}
	if err != nil {
		return nil, fmt.Errorf("lock: %w", err)
	}
	return f, nil
}

func unlockFile(f *os.File) {
	if f == nil {
		return
	}
	name := f.Name()
	_ = f.Close()
	_ = os.Remove(name)
}
