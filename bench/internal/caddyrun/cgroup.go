package caddyrun

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// MemoryLimit, when set before Start, runs Caddy in a memory cgroup of
// that many bytes (Linux, cgroup v1 or v2, as root), as in a container of
// that size: Caddy sets GOMEMLIMIT from the limit (90% of it), the kernel
// keeps the page cache of badger's mapped files within it, and a process
// that needs more is OOM-killed.
var MemoryLimit int64

var cgroupDir string

// cgroup returns the benchmark's memory cgroup, making it first.
func cgroup() (string, error) {
	if cgroupDir == "" {
		dir, limitFile, err := makeCgroup()
		if err != nil {
			return "", err
		}
		if err := os.WriteFile(filepath.Join(dir, limitFile), []byte(strconv.FormatInt(MemoryLimit, 10)), 0o644); err != nil {
			return "", fmt.Errorf("setting the cgroup's memory limit: %w", err)
		}
		cgroupDir = dir
	}
	return cgroupDir, nil
}

// CgroupPeak is the most memory the kernel ever charged to the cgroup
// (its own pages and the page cache it brought in), or 0 if unknown. It
// can be lower than the RSS of the process in it: the pages of the
// binary, read when it was built, are charged elsewhere.
func CgroupPeak() int64 {
	for _, f := range []string{"memory.peak", "memory.max_usage_in_bytes"} {
		if b, err := os.ReadFile(filepath.Join(cgroupDir, f)); err == nil {
			n, _ := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
			return n
		}
	}
	return 0
}
func makeCgroup() (dir, limitFile string, err error) {
	name := fmt.Sprintf("caddy-webhook-bench-%d", os.Getpid())
	if _, err := os.Stat("/sys/fs/cgroup/cgroup.controllers"); err == nil {
		dir, limitFile = filepath.Join("/sys/fs/cgroup", name), "memory.max"
	} else {
		dir, limitFile = filepath.Join("/sys/fs/cgroup/memory", name), "memory.limit_in_bytes"
	}
	if err := os.Mkdir(dir, 0o755); err != nil && !os.IsExist(err) {
		return "", "", fmt.Errorf("creating a memory cgroup (needs root and a writable cgroup fs): %w", err)
	}
	return dir, limitFile, nil
}

// RemoveCgroup deletes the cgroup once no process is left in it.
func RemoveCgroup() {
	if cgroupDir != "" {
		os.Remove(cgroupDir)
	}
}

// CgroupOOMKills reports how many processes the kernel killed in the
// cgroup for lack of memory ("" when unknown).
func CgroupOOMKills() string {
	for _, f := range []string{"memory.events", "memory.oom_control"} {
		b, err := os.ReadFile(filepath.Join(cgroupDir, f))
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "oom_kill "); ok {
				return v
			}
		}
	}
	return ""
}
