package kernelesp

import (
	"bytes"
	_ "embed"
	"fmt"
	"strconv"
	"strings"
	"text/template"
	"time"
)

// Marker starts every line the guest prints for the host to parse.
const Marker = "@@obol"

//go:embed scenario.sh.tmpl
var scenarioTmpl string

// Node is one IPsec host of the scenario, in its own network namespace.
type Node struct {
	Name string // namespace name, also the node directory /run/obol/NAME
	Addr string // its address on the shared veth link (/24)
	Peer string // the other node's address
}

// Scenario is what the guest's PID 1 script does: two nodes, a
// transport-mode PSK conn between them loaded with swanctl, obold beside
// each charon, an initiate from the first node and a ping to the second.
type Scenario struct {
	Nodes        [2]Node
	Conn         string // swanctl conn and child name
	PSK          string
	IKEProposal  string
	ESPProposal  string
	Pings        int
	GuestTimeout int // seconds until the guest's watchdog powers it off
}

// DefaultScenario is the transport-mode host-to-host case.
func DefaultScenario() Scenario {
	return Scenario{
		Nodes: [2]Node{
			{Name: "hosta", Addr: "192.0.2.11", Peer: "192.0.2.12"},
			{Name: "hostb", Addr: "192.0.2.12", Peer: "192.0.2.11"},
		},
		Conn:        "host",
		PSK:         "kernel-esp-test-psk-not-secret",
		IKEProposal: "aes128gcm16-prfsha256-x25519",
		ESPProposal: "aes128gcm16",
		Pings:       5,
		// The scenario takes ~20 s of guest time; a loaded host (make test
		// runs packages in parallel on two cores) slows TCG a lot.
		GuestTimeout: 180,
	}
}

// Script renders the scenario as the guest's /obol/init.
func (s Scenario) Script() ([]byte, error) {
	t, err := template.New("scenario").Parse(scenarioTmpl)
	if err != nil {
		return nil, fmt.Errorf("parse scenario.sh.tmpl: %w", err)
	}
	var b bytes.Buffer
	if err := t.Execute(&b, struct {
		Scenario
		Marker string
	}{s, Marker}); err != nil {
		return nil, fmt.Errorf("render scenario.sh.tmpl: %w", err)
	}
	return b.Bytes(), nil
}

// Section is one command's output as the guest printed it.
type Section struct {
	Name   string
	Output string
	RC     int
	Took   time.Duration // zero if the guest did not say
}

// Console is the guest's console, parsed.
type Console struct {
	Sections map[string]Section
	Order    []string // section names as printed
	// Done is set when the scenario reached its end; Failed counts the
	// steps that exited non-zero (log sections do not count).
	Done   bool
	Failed int
	// Problems are the guest's own complaints: initramfs failure, watchdog.
	Problems []string
}

// ParseConsole reads the marker lines out of the console output. Lines
// outside sections (kernel messages, boot noise) are ignored.
func ParseConsole(raw []byte) (Console, error) {
	c := Console{Sections: map[string]Section{}}
	var cur *Section
	var body []string
	for _, line := range strings.Split(strings.ReplaceAll(string(raw), "\r", ""), "\n") {
		rest, ok := strings.CutPrefix(line, Marker+" ")
		if !ok {
			if cur != nil {
				body = append(body, line)
			}
			continue
		}
		word, arg, _ := strings.Cut(rest, " ")
		switch word {
		case "begin":
			if cur != nil {
				return c, fmt.Errorf("console: section %q begins inside section %q", arg, cur.Name)
			}
			if _, dup := c.Sections[arg]; dup {
				return c, fmt.Errorf("console: section %q printed twice", arg)
			}
			cur, body = &Section{Name: arg}, nil
		case "end":
			// end NAME rc=N [start=EPOCH end=EPOCH]
			f := strings.Fields(arg)
			if cur == nil || len(f) == 0 || f[0] != cur.Name {
				return c, fmt.Errorf("console: end of section %q without its begin", arg)
			}
			kv := map[string]string{}
			for _, x := range f[1:] {
				k, v, _ := strings.Cut(x, "=")
				kv[k] = v
			}
			n, err := strconv.Atoi(kv["rc"])
			if err != nil {
				return c, fmt.Errorf("console: section %q: bad exit status %q", cur.Name, kv["rc"])
			}
			start, err1 := strconv.ParseFloat(kv["start"], 64)
			end, err2 := strconv.ParseFloat(kv["end"], 64)
			if err1 == nil && err2 == nil && end >= start {
				cur.Took = time.Duration((end - start) * float64(time.Second))
			}
			cur.RC, cur.Output = n, strings.Join(body, "\n")
			c.Sections[cur.Name] = *cur
			c.Order = append(c.Order, cur.Name)
			cur = nil
		case "done":
			c.Done = true
			if v, ok := strings.CutPrefix(arg, "failed="); ok {
				c.Failed, _ = strconv.Atoi(v)
			}
		default:
			c.Problems = append(c.Problems, rest)
		}
	}
	if cur != nil {
		return c, fmt.Errorf("console: section %q never ended (the guest stopped inside it)", cur.Name)
	}
	return c, nil
}
