package main

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/obol-ipsec/obol/internal/control"
)

func printStatus(w io.Writer, s control.Status) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	c := s.Charon
	state := "connected"
	if !c.Connected {
		state = "NOT CONNECTED (obold retries by itself)"
	}
	fmt.Fprintf(tw, "charon:\t%s\t%s\n", state, c.Socket)
	if c.Version != "" {
		fmt.Fprintf(tw, "  version:\t%s %s\n", c.Daemon, c.Version)
		fmt.Fprintf(tw, "  uptime:\t%s (since %s)\n", c.Uptime.Round(time.Second), c.Since.Local().Format(time.DateTime))
		fmt.Fprintf(tw, "  datapath:\t%s\n", datapathText(c.Datapath))
		fmt.Fprintf(tw, "  IKE_SAs:\t%d (%d half-open)\n", c.IKESAs, c.HalfOpen)
	}
	if c.LastError != "" {
		fmt.Fprintf(tw, "  last error:\t%s\n", c.LastError)
	}
	o := s.Obold
	fmt.Fprintf(tw, "obold:\t%s, pid %d, up %s\n", o.Version, o.PID, time.Since(o.Started).Round(time.Second))
	fmt.Fprintf(tw, "  config:\t%s\n", o.Config)
	fmt.Fprintf(tw, "  owns:\tconns named %q*: %s\n", o.ConnPrefix, listOrNone(o.OwnedConns))
	fmt.Fprintf(tw, "  reconnects:\t%d (last resync %s, took %s)\n", o.Reconnects, since(o.LastResync), o.ResyncTook.Round(time.Microsecond))
	if len(o.Modules) > 0 {
		var ms []string
		for _, name := range []string{"resolver", "labels", "xfrm", "tokenapi"} {
			ms = append(ms, name+" "+o.Modules[name])
		}
		fmt.Fprintf(tw, "  modules:\t%s\n", strings.Join(ms, ", "))
	}
	if o.LastError != "" {
		fmt.Fprintf(tw, "  last error:\t%s\n", o.LastError)
	}
	tw.Flush()
}

func datapathText(d string) string {
	switch d {
	case "userspace":
		return "userspace ESP (charon kernel-libipsec)"
	case "kernel":
		return "kernel ESP (charon kernel-netlink)"
	}
	return "unknown"
}

func listOrNone(l []string) string {
	if len(l) == 0 {
		return "none"
	}
	return strings.Join(l, ", ")
}

func since(t time.Time) string {
	if t.IsZero() {
		return "never"
	}
	return time.Since(t).Round(time.Second).String() + " ago"
}

func printSAs(w io.Writer, sas []control.SA) {
	if len(sas) == 0 {
		fmt.Fprintln(w, "no SAs")
		return
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SA\tOWNER\tSTATE\tLOCAL\tREMOTE\tALGORITHMS\tAGE\tTRAFFIC IN/OUT\tMODE")
	for _, sa := range sas {
		fmt.Fprintf(tw, "%s #%d\t%s\t%s\t%s\t%s\t%s\t%s\t\tIKEv%d\n", sa.Name, sa.UniqueID, sa.Owner, sa.State,
			endpoint(sa.LocalHost.String(), sa.LocalID), endpoint(sa.RemoteHost.String(), sa.RemoteID),
			algs(sa.EncrAlg, sa.EncrKeySize, sa.IntegAlg, sa.PRFAlg, sa.DHGroup), sa.Established.Round(time.Second), sa.Version)
		for _, ch := range sa.Children {
			mode := []string{ch.Mode, ch.Protocol}
			if ch.Encap {
				mode = append(mode, "UDP-encap")
			}
			if ch.ESN {
				mode = append(mode, "ESN")
			}
			if ch.CPIIn != "" {
				mode = append(mode, "IPComp")
			}
			if ch.Label != "" {
				mode = append(mode, "label="+ch.Label)
			}
			fmt.Fprintf(tw, "  %s #%d\t\t%s\t%s\t%s\t%s\t%s\t%s/%dp %s/%dp\t%s\n", ch.Name, ch.UniqueID, ch.State,
				strings.Join(ch.LocalTS, ","), strings.Join(ch.RemoteTS, ","),
				algs(ch.EncrAlg, ch.EncrKeySize, ch.IntegAlg, "", ch.DHGroup), ch.InstallTime.Round(time.Second),
				byteSize(ch.BytesIn), ch.PacketsIn, byteSize(ch.BytesOut), ch.PacketsOut, strings.Join(mode, " "))
		}
	}
	tw.Flush()
}

func endpoint(host, id string) string {
	if id == "" || id == host {
		return host
	}
	return host + " [" + id + "]"
}

func algs(encr string, size int, integ, prf, dh string) string {
	var parts []string
	if encr != "" {
		if size > 0 {
			encr = fmt.Sprintf("%s-%d", encr, size)
		}
		parts = append(parts, encr)
	}
	for _, p := range []string{integ, prf, dh} {
		if p != "" {
			parts = append(parts, p)
		}
	}
	return strings.Join(parts, "/")
}

func byteSize(n uint64) string {
	switch {
	case n >= 1<<20:
		return fmt.Sprintf("%.1fMiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1fKiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%dB", n)
}

func printConns(w io.Writer, cs []control.ConnEntry) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "CONN\tOWNER")
	for _, c := range cs {
		fmt.Fprintf(tw, "%s\t%s\n", c.Name, c.Owner)
	}
	tw.Flush()
}

func printEvents(w io.Writer, evs []control.EventRecord) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "TIME\tEVENT\tSA\tDETAIL")
	for _, e := range evs {
		kind := e.Kind
		if strings.HasSuffix(kind, "updown") {
			kind = strings.TrimSuffix(kind, "updown") + updown(e.Up)
		}
		sa := ""
		if e.IKE != "" {
			sa = fmt.Sprintf("%s #%d", e.IKE, e.IKEID)
			if e.Child != "" {
				sa += fmt.Sprintf(" / %s #%d", e.Child, e.ChildID)
			}
		}
		detail := e.Message
		if detail == "" {
			detail = e.RemoteID
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", e.Time.Local().Format("15:04:05.000"), kind, sa, detail)
	}
	tw.Flush()
}

func updown(up bool) string {
	if up {
		return "up"
	}
	return "down"
}
