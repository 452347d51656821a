package main

import (
	"errors"
	"flag"
	"fmt"

	"github.com/obol-ipsec/obol/internal/config"
	"github.com/obol-ipsec/obol/internal/control"
	"github.com/obol-ipsec/obol/internal/labels"
)

const labelsUsage = `Usage:
  obolctl labels check FILE
  obolctl labels request --local ADDR --remote ADDR --label LABEL [--proto N] [--port N] [--json]

check explains, for each [[labels.entry]] of an obold config, which labels may
use it and why (TE rule, MLS range), and which listed labels it refuses.
request asks the running obold for an SA for a labeled flow, the way a kernel
ACQUIRE carrying a security context would: the label policy decides first,
then obold brings up the matching labeled CHILD_SA; the answer says why not.`

func (e *env) labels(args []string) error {
	if len(args) == 0 {
		fmt.Fprintln(e.stderr, labelsUsage)
		return errUsage
	}
	switch args[0] {
	case "check":
		return e.labelsCheck(args[1:])
	case "request":
		return e.labelsRequest(args[1:])
	case "-h", "--help", "help":
		fmt.Fprintln(e.stderr, labelsUsage)
		return flag.ErrHelp
	}
	fmt.Fprintf(e.stderr, "obolctl: unknown labels command %q\n%s\n", args[0], labelsUsage)
	return errUsage
}

func (e *env) labelsCheck(args []string) error {
	fs := e.flags("labels check", "labels check FILE", "Explains which labels may use which entry of FILE's [labels], and why.")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return errUsage
	}
	if fs.NArg() != 1 {
		fs.Usage()
		return errUsage
	}
	cfg, err := config.Load(fs.Arg(0))
	if err != nil {
		return fmt.Errorf("config has problems:\n%w", err)
	}
	if cfg.Labels.Empty() {
		fmt.Fprintf(e.stdout, "%s has no [[labels.entry]]: no label policy.\n", fs.Arg(0))
		return nil
	}
	fmt.Fprint(e.stdout, labels.Explain(cfg.Labels, nil).String())
	return nil
}

func (e *env) labelsRequest(args []string) error {
	fs := e.flags("labels request", "labels request --local ADDR --remote ADDR --label LABEL [--proto N] [--port N] [--json]",
		"Asks obold for an SA for a labeled flow; prints the decision and what charon did.")
	var r control.LabelsRequest
	fs.StringVar(&r.Local, "local", "", "local address or CIDR of the flow")
	fs.StringVar(&r.Remote, "remote", "", "remote address or CIDR of the flow")
	fs.StringVar(&r.Label, "label", "", "the flow's data label (security context)")
	proto := fs.Uint("proto", 0, "IP protocol number (6 tcp, 17 udp), 0 for any")
	port := fs.Uint("port", 0, "remote port, 0 for any")
	asJSON := fs.Bool("json", false, "print JSON")
	if err := e.parse(fs, args); err != nil {
		return err
	}
	if r.Local == "" || r.Remote == "" {
		fs.Usage()
		return errUsage
	}
	if *proto > 255 || *port > 65535 {
		return fmt.Errorf("--proto must be 0-255 and --port 0-65535")
	}
	r.Protocol, r.RemotePort = uint8(*proto), uint16(*port)
	var ans control.LabelsAnswer
	if err := e.call(control.MethodLabelsRequest, r, &ans); err != nil {
		return err
	}
	if *asJSON {
		return e.printJSON(ans)
	}
	verdict := "refused by the label policy"
	if ans.Allowed {
		verdict = "allowed by the label policy"
	}
	fmt.Fprintf(e.stdout, "%s\n  %s\n", verdict, ans.Reason)
	switch {
	case ans.Established:
		fmt.Fprintf(e.stdout, "CHILD_SA %s/%s is up\n", ans.Conn, ans.Child)
	case ans.Refused != "":
		fmt.Fprintf(e.stdout, "no SA: %s\n", ans.Refused)
	}
	return nil
}
