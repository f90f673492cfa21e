//go:build !(linux || darwin || freebsd)

package store

import "errors"

var errDirLocked = errors.New("the directory is locked by a database open elsewhere")

// errNoDirLock: badger locks the directory in a way of its own on these
// systems, which cannot be taken before it opens the database.
var errNoDirLock = errors.New("not supported on this operating system")

func lockDir(dir string) (unlock func(), err error) { return nil, errNoDirLock }

func syncDir(dir string) error { return nil }
