//go:build linux || darwin || freebsd

package store

import "golang.org/x/sys/unix"

// freeSpace is the space an unprivileged writer may still use on the
// filesystem of dir (root's reserved blocks excluded, as for Caddy running
// as its own user).
func freeSpace(dir string) (int64, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return 0, err
	}
	return int64(st.Bavail) * int64(st.Bsize), nil
}
