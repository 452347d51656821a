// Command demo is `make demo`: it builds the lab, runs obold on both
// gateways, brings up a swanctl tunnel between them, shows what obolctl
// sees, and tears everything down, also on Ctrl-C or failure.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/obol-ipsec/obol/e2e/lab"
	"github.com/obol-ipsec/obol/e2e/scenario"
)

func main() {
	start := time.Now()
	err := run()
	if err != nil {
		fmt.Fprintln(os.Stderr, "demo failed:", err)
		os.Exit(1)
	}
	fmt.Printf("\ndemo done in %s; the lab is gone.\n", time.Since(start).Round(100*time.Millisecond))
}

func step(format string, args ...any) { fmt.Printf("\n==> "+format+"\n", args...) }

func run() (err error) {
	bin := os.Getenv("OBOL_BIN")
	if bin == "" {
		return errors.New("set OBOL_BIN to the directory with obold and obolctl (make demo does)")
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()

	step("building the lab: namespaces, knot + unbound with DNSSEC, charon on gwa and gwb")
	l, err := lab.Start(ctx, lab.Options{
		Charon: []string{lab.GWA, lab.GWB},
		Zones: []lab.Zone{{Name: "example.test.", Records: []string{
			"gwa 300 IN A 192.0.2.1",
			"gwb 300 IN A 192.0.2.2",
		}}},
	})
	if err != nil {
		return err
	}
	defer func() {
		step("tearing down")
		if cerr := l.Close(); cerr != nil {
			err = errors.Join(err, cerr)
		}
		if left := l.Leftovers(); len(left) > 0 {
			err = errors.Join(err, fmt.Errorf("left behind: %v", left))
		}
	}()
	gwa, gwb, alice := l.Node(lab.GWA), l.Node(lab.GWB), l.Node(lab.Alice)
	out, err := l.Node(lab.HostA).Exec(ctx, "dig", "+dnssec", "+noall", "+answer", "+comments", "@"+l.DNSServer().Addr().String(), "gwb.example.test", "A")
	if err != nil {
		return err
	}
	fmt.Printf("DNS through the validating resolver (flags include ad = DNSSEC validated):\n%s", grep(string(out), "flags:", "IN\tA"))

	step("loading a PSK tunnel with swanctl on both gateways (alice's 10.1.0.0/24 <-> bob's 10.2.0.0/24)")
	for _, g := range []struct {
		n                *lab.Node
		local, remote    string
		localNet, remNet string
	}{{gwa, "192.0.2.1", "192.0.2.2", "10.1.0.0/24", "10.2.0.0/24"}, {gwb, "192.0.2.2", "192.0.2.1", "10.2.0.0/24", "10.1.0.0/24"}} {
		path, err := g.n.WriteFile("swanctl.conf", []byte(scenario.SwanctlGateway(g.local, g.remote, g.localNet, g.remNet)))
		if err != nil {
			return err
		}
		if out, err := g.n.Swanctl(ctx, "--load-all", "--file", path); err != nil {
			return fmt.Errorf("%s: %w\n%s", g.n.Name, err, out)
		}
	}

	step("starting obold on both gateways")
	sockets := map[string]string{}
	for _, n := range []*lab.Node{gwa, gwb} {
		sock := filepath.Join(n.Dir, "obold.sock")
		sockets[n.Name] = sock
		cfg, err := n.WriteFile("obold.toml", []byte(scenario.OboldConfig(n.VICI, sock, "")))
		if err != nil {
			return err
		}
		if _, err := n.Start(ctx, "obold", []string{filepath.Join(bin, "obold"), "--config", cfg}, nil); err != nil {
			return err
		}
	}
	ctl := func(n *lab.Node, args ...string) (string, error) {
		argv := append([]string{filepath.Join(bin, "obolctl"), "--socket", sockets[n.Name]}, args...)
		out, err := n.Exec(ctx, argv...)
		return string(out), err
	}
	if err := waitFor(ctx, func() bool { _, err := ctl(gwa, "status"); return err == nil }); err != nil {
		return fmt.Errorf("obold on gwa did not answer: %w", err)
	}

	step("initiating the tunnel and pinging bob (10.2.0.10) from alice")
	if out, err := gwa.Swanctl(ctx, "--initiate", "--child", "net"); err != nil {
		return fmt.Errorf("initiate: %w\n%s", err, out)
	}
	out, err = alice.Exec(ctx, "ping", "-c", "3", "-i", "0.2", "-W", "2", "10.2.0.10")
	if err != nil {
		return fmt.Errorf("ping: %w\n%s", err, out)
	}
	fmt.Print(grep(string(out), "packets transmitted"))

	for _, n := range []*lab.Node{gwa, gwb} {
		step("obolctl on %s", n.Name)
		for _, args := range [][]string{{"status"}, {"sas"}, {"events"}} {
			out, err := ctl(n, args...)
			if err != nil {
				return fmt.Errorf("obolctl %v: %w\n%s", args, err, out)
			}
			fmt.Printf("$ obolctl %s\n%s\n", strings.Join(args, " "), out)
		}
	}
	return nil
}

func waitFor(ctx context.Context, cond func() bool) error {
	for !cond() {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	return nil
}

// grep keeps the lines containing any of subs.
func grep(s string, subs ...string) string {
	var b strings.Builder
	for _, line := range strings.Split(s, "\n") {
		for _, sub := range subs {
			if strings.Contains(line, sub) {
				b.WriteString(line + "\n")
				break
			}
		}
	}
	return b.String()
}
