//go:build linux || darwin || freebsd

package store

import (
	"errors"
	"os"

	"golang.org/x/sys/unix"
)

// errDirLocked: another process (or another Open here) has the database
// open.
var errDirLocked = errors.New("the directory is locked by a database open elsewhere")

// lockDir takes badger's own lock on dir (flock on the directory) for
// work that must happen before badger opens it and must never touch a
// database open elsewhere. The returned unlock releases it; badger.Open
// takes the lock afresh.
func lockDir(dir string) (unlock func(), err error) {
	d, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	if unix.Flock(int(d.Fd()), unix.LOCK_EX|unix.LOCK_NB) != nil {
		d.Close()
		return nil, errDirLocked
	}
	return func() { d.Close() }, nil
}

// syncDir makes removals and renames in dir outlast a power cut.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
