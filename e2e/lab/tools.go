package lab

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
)

// toolPackages says which Debian package ships each program the lab runs.
var toolPackages = map[string]string{
	"ip":             "iproute2",
	"sysctl":         "procps",
	"tcpdump":        "tcpdump",
	"charon-systemd": "charon-systemd",
	"swanctl":        "strongswan-swanctl",
	"knotd":          "knot",
	"knotc":          "knot",
	"unbound":        "unbound",
}

var dnsTools = []string{"knotd", "knotc", "unbound"}

// toolbox holds absolute paths of the programs the lab needs; root's PATH
// usually has /usr/sbin, a test runner's may not.
type toolbox struct {
	mu    sync.Mutex
	paths map[string]string
}

func lookTool(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return filepath.Abs(p)
	}
	for _, dir := range []string{"/usr/sbin", "/sbin", "/usr/bin", "/bin"} {
		p := filepath.Join(dir, name)
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s not found: apt-get install %s", name, toolPackages[name])
}

func findTools(names []string) (*toolbox, error) {
	t := &toolbox{paths: map[string]string{}}
	return t, t.need(names...)
}

// need resolves more tools (e.g. DNS ones when SetZone starts DNS late).
func (t *toolbox) need(names ...string) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	var errs []error
	for _, n := range names {
		if _, ok := t.paths[n]; ok {
			continue
		}
		p, err := lookTool(n)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		t.paths[n] = p
	}
	return errors.Join(errs...)
}

// path returns the resolved path, or the bare name (exec then reports it missing).
func (t *toolbox) path(name string) string {
	t.mu.Lock()
	defer t.mu.Unlock()
	if p, ok := t.paths[name]; ok {
		return p
	}
	return name
}
