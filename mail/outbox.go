package mail

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// Outbox "sends" by writing each message as an .eml file into a directory,
// for sites without an SMTP relay. Files are named
// <unix-nanos>-<random>.eml (welcome-<hash of the Message-ID>.eml for a
// welcome mail, so that a mail sent again replaces itself), have mode 0600
// and appear atomically: a reader never sees a partial file.
type Outbox struct {
	dir string
}

// NewOutbox returns an Outbox writing into dir, creating it (mode 0700)
// if needed. Temporary files a crash left behind (never a sent mail: a
// mail appears only by its rename) are removed; the caller holds the data
// directory, so no other writer is using them.
func NewOutbox(dir string) (*Outbox, error) {
	if dir == "" {
		return nil, fmt.Errorf("mail: outbox directory is empty")
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("mail: create outbox: %w", err)
	}
	stale, err := filepath.Glob(filepath.Join(dir, ".tmp-*.eml"))
	if err != nil {
		return nil, fmt.Errorf("mail: outbox %s: %w", dir, err)
	}
	for _, f := range stale {
		if err := os.Remove(f); err != nil {
			return nil, fmt.Errorf("mail: remove a temporary file a crash left in the outbox: %w", err)
		}
	}
	return &Outbox{dir: dir}, nil
}

// Transport returns "outbox".
func (o *Outbox) Transport() string { return TransportOutbox }

// Dir is the outbox directory.
func (o *Outbox) Dir() string { return o.dir }

// String is "outbox:" and the directory.
func (o *Outbox) String() string { return "outbox:" + o.dir }

// Send writes msg into a new .eml file: a temporary file in the same
// directory, synced, renamed into place, then the directory synced. from
// and to are checked like SMTP envelope addresses; the file holds msg as
// is. File system errors are temporary.
func (o *Outbox) Send(ctx context.Context, from string, to string, msg []byte) error {
	var r [8]byte
	if _, err := rand.Read(r[:]); err != nil {
		return &SendError{Transport: TransportOutbox, Op: "write", temporary: true, Err: err}
	}
	return o.sendAs(ctx, fmt.Sprintf("%d-%s.eml", time.Now().UnixNano(), hex.EncodeToString(r[:])), from, to, msg)
}

// sendAs is Send into the file name: a message sent again under the same
// name replaces the first, atomically, so the outbox holds it once.
func (o *Outbox) sendAs(ctx context.Context, name, from, to string, msg []byte) error {
	if _, _, err := envelope(TransportOutbox, from, to); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return &SendError{Transport: TransportOutbox, Op: "write", temporary: true, Err: err}
	}
	if _, err := o.write(name, msg); err != nil {
		return &SendError{Transport: TransportOutbox, Op: "write", temporary: true, Err: err}
	}
	return nil
}

// write stores msg under name and returns the file's path.
func (o *Outbox) write(name string, msg []byte) (path string, err error) {
	final := filepath.Join(o.dir, name)

	tmp, err := os.CreateTemp(o.dir, ".tmp-*.eml")
	if err != nil {
		return "", err
	}
	defer func() {
		if err != nil {
			_ = tmp.Close()
			_ = os.Remove(tmp.Name())
		}
	}()
	if err = tmp.Chmod(0o600); err != nil {
		return "", err
	}
	if _, err = tmp.Write(msg); err != nil {
		return "", err
	}
	if err = tmp.Sync(); err != nil {
		return "", err
	}
	if err = tmp.Close(); err != nil {
		return "", err
	}
	if err = os.Rename(tmp.Name(), final); err != nil {
		return "", err
	}
	d, err := os.Open(o.dir)
	if err != nil {
		return final, err
	}
	defer d.Close()
	if err = d.Sync(); err != nil {
		return final, err
	}
	return final, nil
}
