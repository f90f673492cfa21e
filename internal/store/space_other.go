//go:build !(linux || darwin || freebsd || windows)

package store

import "errors"

func freeSpace(string) (int64, error) {
	return 0, errors.New("reading free disk space is not supported on this system")
}
