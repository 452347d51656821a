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
		Charon: []string{lab.GWA, lab.GWB, lab.HostA, lab.HostB},
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
	return demoOE(ctx, l, bin)
}

// demoOE: opportunistic encryption between hosta and hostb from DNS alone.
func demoOE(ctx context.Context, l *lab.Lab, bin string) error {
	ha, hb := l.Node(lab.HostA), l.Node(lab.HostB)
	step("opportunistic encryption: hosta and hostb get keys; obolctl records says what to publish")
	var records []string
	sockets := map[*lab.Node]string{}
	tokenSockets := map[*lab.Node]string{}
	for _, h := range []struct {
		n    *lab.Node
		addr string
		peer string
	}{{ha, "192.0.2.11", "192.0.2.12"}, {hb, "192.0.2.12", "192.0.2.11"}} {
		key := filepath.Join(h.n.Dir, "oe-key.pem")
		if out, err := h.n.Exec(ctx, "sh", "-c", "pki --gen --type rsa --size 2048 --outform pem > "+key+" 2>/dev/null"); err != nil {
			return fmt.Errorf("pki on %s: %w\n%s", h.n.Name, err, out)
		}
		sock := filepath.Join(h.n.Dir, "obold.sock")
		sockets[h.n] = sock
		tokens := filepath.Join(h.n.Dir, "token.sock")
		tokenSockets[h.n] = tokens
		cfg, err := h.n.WriteFile("obold.toml", []byte(scenario.OboldConfig(h.n.VICI, sock,
			scenario.OEHost(h.addr, "", h.peer, key, "")+fmt.Sprintf("\n[tokenapi]\nenabled = true\nsocket = %q\n", tokens))))
		if err != nil {
			return err
		}
		out, err := h.n.Exec(ctx, filepath.Join(bin, "obolctl"), "records", "--config", cfg)
		if err != nil {
			return fmt.Errorf("obolctl records: %w\n%s", err, out)
		}
		if h.n == ha {
			fmt.Printf("$ obolctl records   (on hosta)\n%s\n", out)
		}
		for _, line := range strings.Split(string(out), "\n") {
			if line != "" && !strings.HasPrefix(line, ";") {
				records = append(records, line)
			}
		}
		if _, err := h.n.Start(ctx, "obold", []string{filepath.Join(bin, "obold"), "--config", cfg}, nil); err != nil {
			return err
		}
	}
	if err := l.SetZone(ctx, lab.Zone{Name: "2.0.192.in-addr.arpa.", Records: records}); err != nil {
		return fmt.Errorf("publish the records (knot signs them, unbound validates): %w", err)
	}
	ctl := func(n *lab.Node, args ...string) (string, error) {
		out, err := n.Exec(ctx, append([]string{filepath.Join(bin, "obolctl"), "--socket", sockets[n]}, args...)...)
		return string(out), err
	}
	if err := waitFor(ctx, func() bool { _, err := ctl(ha, "status"); return err == nil }); err != nil {
		return err
	}
	step("hosta pings hostb: the first packet is held, obold finds hostb's key in DNS and brings up a tunnel")
	start := time.Now()
	if err := waitFor(ctx, func() bool {
		_, err := ha.Exec(ctx, "ping", "-c", "1", "-W", "1", "192.0.2.12")
		return err == nil
	}); err != nil {
		return fmt.Errorf("hosta never reached hostb: %w", err)
	}
	fmt.Printf("hostb answered %s after the first packet\n", time.Since(start).Round(time.Millisecond))
	for _, args := range [][]string{{"oe", "list"}, {"lookup", "192.0.2.12"}, {"sas"}, {"xfrm", "check"}} {
		out, err := ctl(ha, args...)
		if err != nil {
			return fmt.Errorf("obolctl %v: %w\n%s", args, err, out)
		}
		fmt.Printf("$ obolctl %s   (on hosta)\n%s\n", strings.Join(args, " "), out)
	}
	return demoTokens(ctx, ha, hb, bin, tokenSockets)
}

// demoTokens: programs learn how their traffic is protected and who the
// peer is, from obold's token API: example servers in Go and C on hostb,
// and obolctl token connect on hosta.
func demoTokens(ctx context.Context, ha, hb *lab.Node, bin string, tokenSockets map[*lab.Node]string) error {
	step("token API: example servers on hostb print each client's pToken and iToken")
	goSrv, err := hb.Start(ctx, "tokenserver", []string{filepath.Join(bin, "tokenserver"), "--listen", "192.0.2.12:7001", "--token-socket", tokenSockets[hb]}, nil)
	if err != nil {
		return err
	}
	cSrv, err := hb.Start(ctx, "example_server_c", []string{filepath.Join(bin, "example_server_c"), "7002", tokenSockets[hb]}, nil)
	if err != nil {
		return err
	}
	for _, port := range []string{"7001", "7002"} {
		if err := waitFor(ctx, func() bool {
			out, _ := hb.Exec(ctx, "ss", "-ltn", "sport = :"+port)
			return strings.Contains(string(out), ":"+port)
		}); err != nil {
			return err
		}
		out, err := ha.Exec(ctx, "sh", "-c", "nc -w 2 192.0.2.12 "+port+" </dev/null")
		if err != nil {
			return fmt.Errorf("connect to hostb:%s: %w\n%s", port, err, out)
		}
		if len(out) > 0 {
			fmt.Printf("hosta got: %s", out)
		}
	}
	time.Sleep(200 * time.Millisecond) // let the servers print
	for _, p := range []*lab.Process{goSrv, cSrv} {
		b, err := os.ReadFile(p.Log)
		if err != nil {
			return err
		}
		fmt.Printf("$ %s   (on hostb, its output)\n%s\n", p.Name, b)
	}
	out, err := ha.Exec(ctx, filepath.Join(bin, "obolctl"), "token", "connect", "192.0.2.12:7001", "--token-socket", tokenSockets[ha])
	if err != nil {
		return fmt.Errorf("obolctl token connect: %w\n%s", err, out)
	}
	fmt.Printf("$ obolctl token connect 192.0.2.12:7001   (on hosta)\n%s\n", out)
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
