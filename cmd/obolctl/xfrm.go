package main

import (
	"errors"
	"fmt"
	"text/tabwriter"

	"github.com/obol-ipsec/obol/internal/control"
	"github.com/obol-ipsec/obol/plugins"
)

// errDrift makes obolctl exit 1 when the kernel differs from what obold
// wants, so monitoring can alert on it.
var errDrift = errors.New("the kernel's XFRM policies differ from obold's")

func (e *env) xfrm(args []string) error {
	const usage = "Usage: obolctl xfrm check [--json]\n\ncheck compares the kernel policies obold means to have (OE bypasses, traps,\nblocks, per-pair allows, shunts) with the kernel's, and lists what is missing,\nwhat differs (extra) and what is obold's but no longer wanted (stale).\nExit status 1 when they differ."
	if len(args) == 0 || args[0] != "check" {
		fmt.Fprintln(e.stderr, usage)
		if len(args) > 0 && (args[0] == "--help" || args[0] == "-h") {
			return errHelp
		}
		return errUsage
	}
	fs := e.flags("xfrm check", "xfrm check [--json]", "Compares obold's wanted kernel policies with the kernel's. Exit status 1 when they differ.")
	asJSON := fs.Bool("json", false, "print JSON")
	if err := e.parse(fs, args[1:]); err != nil {
		return err
	}
	var r control.XFRMReport
	if err := e.call(control.MethodXFRMCheck, nil, &r); err != nil {
		return err
	}
	if *asJSON {
		if err := e.printJSON(r); err != nil {
			return err
		}
	} else {
		fmt.Fprintf(e.stdout, "datapath %s; obold wants %d policies\n", datapathText(r.Datapath), r.Wanted)
		if r.OK {
			fmt.Fprintln(e.stdout, "OK: the kernel holds exactly obold's policies")
		}
		tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
		for _, g := range []struct {
			what string
			ps   []plugins.Policy
		}{{"MISSING", r.Missing}, {"EXTRA", r.Extra}, {"STALE", r.Stale}} {
			for _, p := range g.ps {
				fmt.Fprintf(tw, "%s\t%s\t%s -> %s\tproto %d\tprio %d\tlifetime %s\n", g.what, p.Action, p.Src, p.Dst, p.Proto, p.Priority, p.Lifetime)
			}
		}
		tw.Flush()
	}
	if !r.OK {
		return errDrift
	}
	return nil
}
