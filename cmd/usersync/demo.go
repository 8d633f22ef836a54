package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// printWelcome prints what a new user needs: generated secrets (once) and,
// in demo mode, where its data is and curl lines to try.
func printWelcome(w io.Writer, addr string, fresh map[string]string, demo bool, data string, tempData bool) {
	if k, ok := fresh["access key"]; ok {
		fmt.Fprintf(w, "Generated webhook access key (shown once, stored only as a hash): %s\n", k)
	}
	if t, ok := fresh["admin token"]; ok {
		fmt.Fprintf(w, "Generated admin token for /api (shown once, stored only as a hash): %s\n", t)
	}
	if !demo {
		return
	}
	key := fresh["access key"]
	if key == "" {
		key = "<your access key>"
	}
	token := fresh["admin token"]
	if token == "" {
		token = "<your admin token>"
	}
	base := "http://" + addr
	if tempData {
		fmt.Fprintf(w, "\nDemo data: %s (a temporary directory, removed when usersync stops; --data DIR keeps it)\n", data)
	} else {
		fmt.Fprintf(w, "\nDemo data: %s (marked as the demo's: a real usersync serve refuses it)\n", data)
	}
	fmt.Fprintf(w, `
Demo: usersync is wired to an in-process FunnelKit with contacts 1-3 and tags 1-3.
Try (as FunnelKit would send them):

  curl -s '%[1]s/?wpf_action=add&contact_id=1&send_notification=true&access_key=%[2]s'
  curl -s -X POST %[1]s/ -d wpf_action=update_tags -d contact_id=1 -d access_key=%[2]s
  curl -s -X POST %[1]s/ -H 'Content-Type: application/json' -d '{"wpf_action":"update","contact_id":"1","access_key":"%[2]s"}'
  curl -s -H 'Authorization: Bearer %[3]s' %[1]s/api/users/1
  curl -s -H 'Authorization: Bearer %[3]s' %[1]s/api/users/1/history

Stop with Ctrl-C.
`, base, key, token)
}

// demoMarker marks a data directory made by --demo.
const demoMarker = ".usersync-demo"

// demoData refuses to run the demo on a data directory with real data: the
// demo replaces the access key and would send the real queue to the
// simulator.
func demoData(dir string) error {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		entries = nil
	} else if err != nil {
		return fmt.Errorf("--data %s: %w", dir, err)
	}
	marked := false
	for _, e := range entries {
		marked = marked || e.Name() == demoMarker
	}
	if len(entries) > 0 && !marked {
		return fmt.Errorf("--demo refuses --data %s: it holds data that --demo did not make; leave --data out (the demo then runs on a temporary directory) or give --demo its own directory (for example --data ./demo-data)", dir)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create data directory: %w", err)
	}
	return os.WriteFile(filepath.Join(dir, demoMarker), []byte("made by usersync serve --demo\n"), 0o600)
}

// errDemoData is a real serve given a data directory made by --demo.
var errDemoData = errors.New("made by usersync serve --demo")

// refuseDemoData keeps a real server off a data directory made by --demo:
// it holds the demo's sample users and throw-away keys.
func refuseDemoData(dir string) error {
	_, err := os.Stat(filepath.Join(dir, demoMarker))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("--data %s: %w", dir, err)
	}
	return fmt.Errorf("--data %s was %w (it holds the demo's sample users and throw-away keys, and is marked with %s): "+
		"give the real server its own directory (for example --data /var/lib/usersync), or delete %s if you no longer need the demo data",
		dir, errDemoData, demoMarker, dir)
}

// resolveData gives the data directory to open: for --demo without --data
// a new temporary directory (remove deletes it), for --demo one it may use,
// and for a real server one --demo did not make.
func resolveData(cfg *serveConfig) (dir string, remove func() error, err error) {
	if !cfg.Demo {
		return cfg.Data, nil, refuseDemoData(cfg.Data)
	}
	dir = cfg.Data
	if cfg.tempData {
		if dir, err = os.MkdirTemp("", "usersync-demo-"); err != nil {
			return "", nil, fmt.Errorf("create a temporary data directory for --demo: %w (or give one with --data DIR)", err)
		}
		remove = func() error {
			if err := os.RemoveAll(dir); err != nil {
				return fmt.Errorf("remove the demo's temporary data directory: %w", err)
			}
			return nil
		}
	}
	if err := demoData(dir); err != nil {
		if remove != nil {
			_ = remove()
		}
		return "", nil, err
	}
	return dir, remove, nil
}
