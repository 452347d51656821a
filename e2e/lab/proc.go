package lab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"
)

// spawner forks every child of a lab from one goroutine locked to its OS
// thread. Pdeathsig is tied to the forking thread, and Go may retire other
// threads (a goroutine that exits while locked takes its thread along),
// which would SIGKILL children forked there. This thread lives until the
// lab is closed, then exits: anything still alive then is killed.
type spawner struct {
	reqs chan spawnReq
	done chan struct{}
}

type spawnReq struct {
	cmd *exec.Cmd
	err chan<- error
}

func newSpawner() *spawner {
	s := &spawner{reqs: make(chan spawnReq), done: make(chan struct{})}
	go func() {
		runtime.LockOSThread()
		// Never unlocked: returning locked ends the thread (see above).
		defer close(s.done)
		for r := range s.reqs {
			r.err <- r.cmd.Start()
		}
	}()
	return s
}

func (s *spawner) start(cmd *exec.Cmd) error {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	errc := make(chan error, 1)
	s.reqs <- spawnReq{cmd: cmd, err: errc}
	return <-errc
}

func (s *spawner) stop() {
	close(s.reqs)
	<-s.done
}

// Process is a program the lab started in a node. Its stdout and stderr go
// to Log.
type Process struct {
	Name string
	Node string
	PID  int
	Log  string

	cmd     *exec.Cmd
	done    chan struct{}
	waitErr error  // valid after done
	start   string // /proc start time at spawn: tells a reused PID apart
}

// spawn starts cmd through the lab's spawner and tracks it until it exits.
// Holding l.mu across the fork makes "closed" and "tracked" atomic for Close.
func (l *Lab) spawn(cmd *exec.Cmd, node, name, log string) (*Process, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil, ErrClosed
	}
	if err := l.sp.start(cmd); err != nil {
		return nil, fmt.Errorf("starting %s on %s: %w", name, node, err)
	}
	p := &Process{Name: name, Node: node, PID: cmd.Process.Pid, Log: log, cmd: cmd, done: make(chan struct{}), start: startTime(cmd.Process.Pid)}
	l.running[p] = struct{}{}
	go func() {
		p.waitErr = cmd.Wait()
		close(p.done)
		l.mu.Lock()
		delete(l.running, p)
		l.mu.Unlock()
	}()
	return p, nil
}

// run runs cmd to completion (tracked), returning its combined output.
func (l *Lab) run(cmd *exec.Cmd, node, name string) ([]byte, error) {
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	// A grandchild holding our pipe must not hang us forever; generous,
	// because a loaded 2-core machine can starve the pipe readers.
	cmd.WaitDelay = 10 * time.Second
	p, err := l.spawn(cmd, node, name, "")
	if err != nil {
		return nil, err
	}
	<-p.done
	return out.Bytes(), p.waitErr
}

// netnsCmd wraps argv in `ip netns exec NS`: ip execs argv in place, so the
// PID is argv's own.
func (n *Node) netnsCmd(ctx context.Context, argv []string) *exec.Cmd {
	return exec.CommandContext(ctx, n.lab.tools.path("ip"), append([]string{"netns", "exec", n.NS}, argv...)...)
}

// netnsDaemon is netnsCmd for a process that outlives the call starting it:
// the lab stops it (Process.Stop, Close), no context does.
func (n *Node) netnsDaemon(argv []string) *exec.Cmd {
	return exec.Command(n.lab.tools.path("ip"), append([]string{"netns", "exec", n.NS}, argv...)...)
}

// Exec runs argv to completion inside the node's namespace and returns its
// combined output; the error includes the output. ctx cancels it (SIGKILL).
func (n *Node) Exec(ctx context.Context, argv ...string) ([]byte, error) {
	if len(argv) == 0 {
		return nil, errors.New("Exec: empty command")
	}
	out, err := n.lab.run(n.netnsCmd(ctx, argv), n.Name, filepath.Base(argv[0]))
	if err != nil {
		return out, fmt.Errorf("%s: %s: %w: %s", n.Name, strings.Join(argv, " "), err, bytes.TrimSpace(out))
	}
	return out, nil
}

// Start runs argv in the background inside the node's namespace, with env
// added to the current environment. stdout and stderr go to
// <node dir>/<name>.log (appended). ctx only bounds the start: the process
// lives until it exits, is stopped, or the lab is closed.
func (n *Node) Start(ctx context.Context, name string, argv []string, env []string) (*Process, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if name == "" || strings.ContainsAny(name, "/\x00") || len(argv) == 0 {
		return nil, fmt.Errorf("Start on %s: need a name without '/' and a command", n.Name)
	}
	log := filepath.Join(n.Dir, name+".log")
	f, err := os.OpenFile(log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("Start %s on %s: %w", name, n.Name, err)
	}
	defer f.Close() // the child has its own copy
	cmd := n.netnsDaemon(argv)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = f, f
	p, err := n.lab.spawn(cmd, n.Name, name, log)
	if err != nil {
		return nil, err
	}
	n.waitEntered(p)
	return p, nil
}

// waitEntered waits (up to 2 s) until `ip netns exec` has entered the
// namespace and exec'd the command (its command line is no longer ip's),
// so callers may inspect the process at once.
func (n *Node) waitEntered(p *Process) {
	ipArgs := strings.Join(p.cmd.Args, "\x00") + "\x00"
	for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		if p.Exited() {
			return
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", p.PID))
		if err != nil {
			return
		}
		if len(b) > 0 && string(b) != ipArgs {
			return
		}
	}
}

// Exited reports whether the process has ended. A zombie (exited, not yet
// reaped) counts as ended.
func (p *Process) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
	}
	// Between cmd.Wait reaping the process and done closing, /proc/PID is
	// gone (or, rarely, belongs to a new process): both mean it ended.
	if f := procStat(p.PID); len(f) == 0 {
		return true
	}
	if p.start != "" && startTime(p.PID) != p.start {
		return true
	}
	return isZombie(p.PID)
}

// Signal sends sig to the process (through its pidfd: no PID reuse race).
func (p *Process) Signal(sig os.Signal) error {
	if p.Exited() {
		return nil
	}
	if err := p.cmd.Process.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("signal %v to %s (pid %d): %w", sig, p.Name, p.PID, err)
	}
	return nil
}

// Wait blocks until the process exits and returns its exit error (nil for
// status 0), or ctx's error.
func (p *Process) Wait(ctx context.Context) error {
	select {
	case <-p.done:
		return p.waitErr
	case <-ctx.Done():
		return ctx.Err()
	}
}

// waitExited polls until the process has exited (or is a zombie).
func (p *Process) waitExited(timeout time.Duration) bool {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		if p.Exited() {
			return true
		}
		select {
		case <-p.done:
			return true
		case <-deadline.C:
			return p.Exited()
		case <-tick.C:
		}
	}
}

// Stop sends SIGTERM, waits up to timeout, then SIGKILLs and waits again.
func (p *Process) Stop(timeout time.Duration) error {
	_, err := p.stop(timeout)
	return err
}

func (p *Process) stop(timeout time.Duration) (killed bool, err error) {
	if p.Exited() {
		return false, nil
	}
	if err := p.Signal(syscall.SIGTERM); err != nil {
		return false, err
	}
	if p.waitExited(timeout) {
		return false, nil
	}
	return true, p.Kill()
}

// Kill sends SIGKILL and waits (up to 5 s) until the process is gone.
func (p *Process) Kill() error {
	if err := p.Signal(syscall.SIGKILL); err != nil {
		return err
	}
	if !p.waitExited(5 * time.Second) {
		return fmt.Errorf("%s (pid %d) on %s survived SIGKILL for 5 s (stuck in the kernel?)", p.Name, p.PID, p.Node)
	}
	return nil
}

func stopAll(log *slog.Logger, procs []*Process, timeout time.Duration) []error {
	errs := make([]error, len(procs))
	var wg sync.WaitGroup
	for i, p := range procs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			t0 := time.Now()
			killed, err := p.stop(timeout)
			errs[i] = err
			if killed {
				log.Warn("process ignored SIGTERM, killed", "name", p.Name, "node", p.Node, "pid", p.PID)
			} else {
				log.Debug("process stopped", "name", p.Name, "node", p.Node, "pid", p.PID, "elapsed", time.Since(t0))
			}
		}()
	}
	wg.Wait()
	return errs
}
