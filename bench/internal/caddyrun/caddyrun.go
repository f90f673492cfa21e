// Package caddyrun builds Caddy with this plugin and runs it for the
// benchmark and fault programs under bench/.
package caddyrun

import (
	"bufio"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// OrderPayload is the event the delivery benchmarks send: a Kinguin-style
// order update of 123 bytes.
const OrderPayload = `{"orderId":"PHS84FJAG5U","orderExternalId":"AL2FEEHOO2OHF","status":"canceled","updatedAt":"2020-10-16T11:24:08.025+00:00"}`

// Build compiles ./cmd/caddy (run from the repository root) into dir.
func Build(dir string) (string, error) {
	bin := filepath.Join(dir, "caddy")
	out, err := exec.Command("go", "build", "-o", bin, "./cmd/caddy").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go build ./cmd/caddy: %v\n%s", err, out)
	}
	return bin, nil
}

// FreePort returns a loopback port nobody listens on right now.
func FreePort() int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// Process is a running Caddy.
type Process struct {
	cmd  *exec.Cmd
	Log  string
	done chan struct{}
	err  error // how it ended, once done is closed
}

// Start runs bin with the Caddyfile and waits until probeURL answers.
func Start(bin, dir, caddyfile, probeURL string) (*Process, error) {
	cf := filepath.Join(dir, "Caddyfile")
	if err := os.WriteFile(cf, []byte(caddyfile), 0o600); err != nil {
		return nil, err
	}
	p, err := Run(bin, dir, "run", "--config", cf, "--adapter", "caddyfile")
	if err != nil {
		return nil, err
	}
	for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if res, err := http.Get(probeURL); err == nil {
			res.Body.Close()
			return p, nil
		}
	}
	p.Kill()
	return nil, fmt.Errorf("caddy did not answer %s; see %s", probeURL, p.Log)
}

// Run starts bin with args (a Caddy command), its output appended to
// caddy.log in dir, in the memory cgroup when MemoryLimit is set.
func Run(bin, dir string, args ...string) (*Process, error) {
	logPath := filepath.Join(dir, "caddy.log")
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, args...)
	if MemoryLimit > 0 {
		// Join the cgroup before exec, so that Caddy sizes GOMEMLIMIT
		// from its limit as it does in a container, and run a copy of the
		// binary made in it: the page cache of the one just built is
		// charged to the builder, and would be resident but uncounted.
		dir, err := cgroup()
		if err != nil {
			logf.Close()
			return nil, err
		}
		script := `echo $$ > "$0/cgroup.procs" && b="$1.cgroup" && cp "$1" "$b" && shift && exec "$b" "$@"`
		cmd = exec.Command("/bin/sh", append([]string{"-c", script, dir, bin}, args...)...)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	// Autosave and certificates go to a home of their own in dir.
	home := filepath.Join(dir, "xdg")
	cmd.Env = append(os.Environ(), "XDG_CONFIG_HOME="+home, "XDG_DATA_HOME="+home)
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, err
	}
	p := &Process{cmd: cmd, Log: logPath, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		logf.Close()
		close(p.done)
	}()
	return p, nil
}

// Wait waits for the process to end and returns how it ended.
func (p *Process) Wait() error {
	<-p.done
	return p.err
}

// Kill sends SIGKILL and waits for the process to be gone.
func (p *Process) Kill() {
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	for i := 0; i < 500 && !p.exited(); i++ {
		time.Sleep(10 * time.Millisecond)
	}
}

// Stop sends SIGTERM (a graceful stop) and waits; a Caddy still there
// after 30 s is killed, so that no benchmark leaves one running.
func (p *Process) Stop() {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	for i := 0; i < 3000 && !p.exited(); i++ {
		time.Sleep(10 * time.Millisecond)
	}
	if !p.exited() {
		fmt.Fprintf(os.Stderr, "caddy did not stop within 30 s of SIGTERM; killed (see %s)\n", p.Log)
		p.Kill()
	}
}

func (p *Process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Exited reports whether the process is gone (killed by the OOM killer,
// say).
func (p *Process) Exited() bool { return p.exited() }

// RSS is the process's resident memory in bytes (Linux).
func (p *Process) RSS() int64 { return p.status("VmRSS:") }

// RSSAnon is the anonymous part of RSS (heap, stacks): memory the process
// owns, as opposed to file pages it has mapped (badger's tables and value
// log), which the kernel can drop and read again.
func (p *Process) RSSAnon() int64 { return p.status("RssAnon:") }

// CPU is the processor time Caddy has used so far (Linux).
func (p *Process) CPU() time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.cmd.Process.Pid))
	if err != nil {
		return 0
	}
	// Fields after the command name, which is in parentheses: utime and
	// stime are the 12th and 13th, in clock ticks (100 per second).
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	if len(f) < 13 {
		return 0
	}
	utime, _ := strconv.ParseInt(f[11], 10, 64)
	stime, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(utime+stime) * 10 * time.Millisecond
}

func (p *Process) status(field string) int64 {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", p.cmd.Process.Pid))
	if err != nil {
		return 0
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if rest, ok := strings.CutPrefix(s.Text(), field); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return kb * 1024
		}
	}
	return 0
}
