package eventstore

import (
	"errors"
	"os"
	"syscall"
)

// syncData makes f's data durable: fdatasync(2), which skips the
// timestamps fsync would also write.
func syncData(f *os.File) error {
	for {
		err := syscall.Fdatasync(int(f.Fd()))
		if !errors.Is(err, syscall.EINTR) {
			return err
		}
	}
}
