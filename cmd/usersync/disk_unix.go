//go:build unix

package main

import "syscall"

// freeBytes returns the bytes an unprivileged user may still write on
// dir's file system.
func freeBytes(dir string) (uint64, bool, error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return 0, false, err
	}
	return uint64(st.Bavail) * uint64(st.Bsize), true, nil
}
