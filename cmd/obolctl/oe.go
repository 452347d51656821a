package main

import (
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/obol-ipsec/obol/internal/control"
	"github.com/obol-ipsec/obol/internal/oe"
)

const oeUsage = `Usage:
  obolctl oe list [--json]

list shows every opportunistic pair obold knows: its state (resolving,
negotiating, up, failed), policy group, the peer's gateway, where its key came
from, the DNSSEC status of that answer, how long the tunnel has been idle, and
why it failed.`

func (e *env) oe(args []string) error {
	if len(args) == 0 || args[0] != "list" {
		fmt.Fprintln(e.stderr, oeUsage)
		if len(args) > 0 && (args[0] == "--help" || args[0] == "-h") {
			return errHelp
		}
		return errUsage
	}
	fs := e.flags("oe list", "oe list [--json]", "Shows every opportunistic pair obold knows and its state.")
	asJSON := fs.Bool("json", false, "print JSON")
	if err := e.parse(fs, args[1:]); err != nil {
		return err
	}
	var ts []oe.Tunnel
	if err := e.call(control.MethodOEList, nil, &ts); err != nil {
		return err
	}
	if *asJSON {
		return e.printJSON(ts)
	}
	if len(ts) == 0 {
		fmt.Fprintln(e.stdout, "no OE pairs")
		return nil
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "PAIR\tROLE\tSTATE\tGROUP\tGATEWAY\tKEY\tDNSSEC\tIDLE\tSINCE\tREASON")
	for _, t := range ts {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", t.Pair, t.Role, t.State, t.Group, dash(t.Gateway), dash(t.KeySource),
			dash(string(t.DNSSEC)), t.Idle.Round(time.Second), time.Since(t.Since).Round(time.Second), strings.ReplaceAll(t.Reason, "\n", " "))
	}
	return tw.Flush()
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
