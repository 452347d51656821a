package lab

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Capture is a running tcpdump. Packet lines (tcpdump -n) accumulate until Stop.
type Capture struct {
	Node, Iface, Filter string
	proc                *Process

	mu       sync.Mutex
	lines    []string
	readDone chan struct{}
	stopOnce sync.Once
	stopErr  error
}

// Capture starts `tcpdump -n -l --immediate-mode -i IFACE FILTER` in node's
// namespace (use Inet and Bridge to see the wire) and returns once tcpdump
// is listening. filter is a pcap expression ("" for everything). tcpdump
// keeps root (-Z root): dropping to its own user would clear Pdeathsig.
func (l *Lab) Capture(ctx context.Context, node, iface, filter string) (*Capture, error) {
	n, ok := l.nodes[node]
	if !ok {
		return nil, fmt.Errorf("capture: no node %q", node)
	}
	l.mu.Lock()
	l.captures++
	name := fmt.Sprintf("tcpdump-%d", l.captures)
	l.mu.Unlock()

	outR, outW, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		outR.Close()
		outW.Close()
		return nil, err
	}
	argv := []string{l.tools.path("tcpdump"), "-n", "-l", "--immediate-mode", "-Z", "root", "-i", iface}
	if filter != "" {
		argv = append(argv, filter)
	}
	cmd := n.netnsDaemon(argv)
	cmd.Stdout, cmd.Stderr = outW, errW
	log := filepath.Join(n.Dir, name+".log")
	p, err := l.spawn(cmd, n.Name, name, log)
	outW.Close()
	errW.Close()
	if err != nil {
		outR.Close()
		errR.Close()
		return nil, err
	}
	c := &Capture{Node: node, Iface: iface, Filter: filter, proc: p, readDone: make(chan struct{})}
	go func() {
		defer close(c.readDone)
		defer outR.Close()
		sc := bufio.NewScanner(outR)
		for sc.Scan() {
			if sc.Text() == "" { // tcpdump ends with an empty line
				continue
			}
			c.mu.Lock()
			c.lines = append(c.lines, sc.Text())
			c.mu.Unlock()
		}
	}()
	// stderr: copy to the log, and spot "listening on IFACE, link-type ...".
	listening := make(chan struct{})
	stderrDone := make(chan struct{})
	go func() {
		defer close(stderrDone)
		defer errR.Close()
		f, _ := os.OpenFile(log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if f != nil {
			defer f.Close()
		}
		sc := bufio.NewScanner(errR)
		once := sync.Once{}
		for sc.Scan() {
			if f != nil {
				fmt.Fprintln(f, sc.Text())
			}
			if strings.HasPrefix(sc.Text(), "listening on ") {
				once.Do(func() { close(listening) })
			}
		}
	}()

	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	select {
	case <-listening:
		return c, nil
	case <-stderrDone:
	case <-ctx.Done():
	}
	p.Kill()
	<-stderrDone
	return nil, fmt.Errorf("tcpdump -i %s %q on %s did not start listening: %v\n%s", iface, filter, node, ctx.Err(), tail(log, 10))
}

// Lines returns the packet lines seen so far.
func (c *Capture) Lines() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.lines...)
}

// WaitFor waits until a packet line contains substr and returns it.
func (c *Capture) WaitFor(ctx context.Context, substr string) (string, error) {
	for {
		for _, l := range c.Lines() {
			if strings.Contains(l, substr) {
				return l, nil
			}
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("capture on %s/%s: no packet line with %q: %w", c.Node, c.Iface, substr, ctx.Err())
		case <-c.readDone:
			return "", fmt.Errorf("capture on %s/%s ended without a packet line with %q", c.Node, c.Iface, substr)
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// Stop gives packets already on the wire 100 ms to reach tcpdump, stops it
// (SIGINT, then SIGKILL after 2 s) and returns every packet line it printed.
// It errs if tcpdump had died before Stop. Calling it again returns the same.
func (c *Capture) Stop() ([]string, error) {
	c.stopOnce.Do(func() {
		if c.proc.Exited() {
			<-c.proc.done // a zombie is reaped at once; then waitErr is set
			c.stopErr = fmt.Errorf("tcpdump on %s/%s died before Stop: %v\n%s", c.Node, c.Iface, c.proc.waitErr, tail(c.proc.Log, 5))
		} else {
			time.Sleep(100 * time.Millisecond)
			if err := c.proc.Signal(syscall.SIGINT); err != nil {
				c.stopErr = err
			}
			if !c.proc.waitExited(2 * time.Second) {
				c.stopErr = c.proc.Kill()
			}
		}
		<-c.readDone
	})
	return c.Lines(), c.stopErr
}
