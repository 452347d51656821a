// Command obolctl asks obold what it and charon are doing.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/obol-ipsec/obol/internal/config"
	"github.com/obol-ipsec/obol/internal/control"
)

const usage = `obolctl: ask obold what it and charon are doing.

Usage:
  obolctl [--socket PATH] COMMAND [flags]

Commands:
  status              charon's version and uptime, the datapath, obold's state
  sas                 every IKE/CHILD SA on the host (swanctl's included)
  conns               every conn loaded in charon, with its owner
  events              the last events obold saw (up/down, rekey, reconnects)
  config check FILE   check an obold config file
  xfrm check          obold's kernel policies: missing, extra, stale (exit 1 if any)
  oe list             opportunistic pairs: state, gateway, key source, DNSSEC, why
  lookup IP           what DNS says about IP and what obold's OE would do with its traffic
  records             the DNS records to publish for this host's OE key (offline, from the config)
  labels check FILE   which labels may use which entry of FILE's [labels], and why
  labels request ...  ask obold for an SA for a labeled flow (as a labeled ACQUIRE would)
  token ...           how a socket's traffic is protected and who the peer is (token API)

Run "obolctl COMMAND --help" for a command's flags.

Global flags:
`

type env struct {
	stdout, stderr io.Writer
	socket         string
	timeout        time.Duration
}

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }

func run(args []string, stdout, stderr io.Writer) int {
	e := &env{stdout: stdout, stderr: stderr}
	fs := flag.NewFlagSet("obolctl", flag.ContinueOnError)
	fs.SetOutput(stderr)
	def := os.Getenv("OBOL_SOCKET")
	if def == "" {
		def = config.Defaults().Control.Socket
	}
	fs.StringVar(&e.socket, "socket", def, "obold's control socket `PATH` (env OBOL_SOCKET)")
	fs.DurationVar(&e.timeout, "timeout", 10*time.Second, "give up after this long")
	fs.Usage = func() {
		fmt.Fprint(stderr, usage)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() == 0 {
		fs.Usage()
		return 2
	}
	cmd, rest := fs.Arg(0), fs.Args()[1:]
	var err error
	switch cmd {
	case "status":
		err = e.status(rest)
	case "sas":
		err = e.sas(rest)
	case "conns":
		err = e.conns(rest)
	case "events":
		err = e.events(rest)
	case "config":
		err = e.config(rest)
	case "labels":
		err = e.labels(rest)
	case "oe":
		err = e.oe(rest)
	case "xfrm":
		err = e.xfrm(rest)
	case "token":
		err = e.token(rest)
	case "lookup":
		err = e.lookup(rest)
	case "records":
		err = e.records(rest)
	case "help":
		fs.Usage()
		return 0
	default:
		fmt.Fprintf(stderr, "obolctl: unknown command %q; run obolctl --help for the list\n", cmd)
		return 2
	}
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.Is(err, errUsage):
		return 2
	case errors.Is(err, errDrift):
		return 1
	}
	fmt.Fprintln(stderr, "obolctl:", err)
	return 1
}

var errUsage = errors.New("usage")

var errHelp = flag.ErrHelp

// flags makes a subcommand's flag set with a help text.
func (e *env) flags(name, synopsis, help string) *flag.FlagSet {
	fs := flag.NewFlagSet("obolctl "+name, flag.ContinueOnError)
	fs.SetOutput(e.stderr)
	fs.Usage = func() {
		fmt.Fprintf(e.stderr, "Usage: obolctl %s\n\n%s\n", synopsis, help)
		fs.PrintDefaults()
	}
	return fs
}

func (e *env) parse(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return errUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(e.stderr, "obolctl: unexpected argument %q\n", fs.Arg(0))
		fs.Usage()
		return errUsage
	}
	return nil
}

func (e *env) call(method string, params, result any) error {
	ctx, cancel := context.WithTimeout(context.Background(), e.timeout)
	defer cancel()
	c, err := control.Dial(ctx, e.socket)
	if err != nil {
		return err
	}
	defer c.Close()
	return c.Call(ctx, method, params, result)
}

func (e *env) printJSON(v any) error {
	enc := json.NewEncoder(e.stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func (e *env) status(args []string) error {
	fs := e.flags("status", "status [--json]", "Shows charon's version, uptime and datapath, and obold's own state.")
	asJSON := fs.Bool("json", false, "print JSON")
	if err := e.parse(fs, args); err != nil {
		return err
	}
	var s control.Status
	if err := e.call(control.MethodStatus, nil, &s); err != nil {
		return err
	}
	if *asJSON {
		return e.printJSON(s)
	}
	printStatus(e.stdout, s)
	return nil
}

func (e *env) sas(args []string) error {
	fs := e.flags("sas", "sas [--json]", "Lists every IKE_SA and CHILD_SA charon holds, whoever created it.\nOWNER is \"obold\" for obold's conns and \"other\" for swanctl's and the rest.")
	asJSON := fs.Bool("json", false, "print JSON")
	if err := e.parse(fs, args); err != nil {
		return err
	}
	var sas []control.SA
	if err := e.call(control.MethodSAs, nil, &sas); err != nil {
		return err
	}
	if *asJSON {
		return e.printJSON(sas)
	}
	printSAs(e.stdout, sas)
	return nil
}

func (e *env) conns(args []string) error {
	fs := e.flags("conns", "conns [--json]", "Lists every conn loaded in charon and who owns it.")
	asJSON := fs.Bool("json", false, "print JSON")
	if err := e.parse(fs, args); err != nil {
		return err
	}
	var cs []control.ConnEntry
	if err := e.call(control.MethodConns, nil, &cs); err != nil {
		return err
	}
	if *asJSON {
		return e.printJSON(cs)
	}
	printConns(e.stdout, cs)
	return nil
}

func (e *env) events(args []string) error {
	fs := e.flags("events", "events [--json] [--kind K[,K...]] [--limit N]", "Shows the last events obold saw from charon, oldest first.\nKinds: ike-updown, child-updown, ike-rekey, child-rekey, connected, disconnected, log.\nWithout --kind, all but log lines.")
	asJSON := fs.Bool("json", false, "print JSON")
	kinds := fs.String("kind", "", "only these comma-separated kinds")
	limit := fs.Int("limit", 0, "at most N events (the newest)")
	if err := e.parse(fs, args); err != nil {
		return err
	}
	p := control.EventsParams{Limit: *limit}
	if *kinds != "" {
		p.Kinds = strings.Split(*kinds, ",")
	}
	var evs []control.EventRecord
	if err := e.call(control.MethodEvents, p, &evs); err != nil {
		return err
	}
	if *asJSON {
		return e.printJSON(evs)
	}
	printEvents(e.stdout, evs)
	return nil
}

func (e *env) config(args []string) error {
	if len(args) == 0 || args[0] != "check" {
		fmt.Fprintln(e.stderr, "Usage: obolctl config check FILE\n\nChecks an obold config file; prints FILE:LINE for each problem.")
		if len(args) > 0 && (args[0] == "--help" || args[0] == "-h") {
			return flag.ErrHelp
		}
		return errUsage
	}
	fs := e.flags("config check", "config check FILE", "Checks an obold config file without starting obold; prints FILE:LINE: problem; fix for each problem.")
	if err := fs.Parse(args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return errUsage
	}
	if fs.NArg() != 1 {
		fs.Usage()
		return errUsage
	}
	if _, err := config.Load(fs.Arg(0)); err != nil {
		return fmt.Errorf("config has problems:\n%w", err)
	}
	fmt.Fprintf(e.stdout, "%s: OK\n", fs.Arg(0))
	return nil
}
