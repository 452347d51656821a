package kernelesp

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// moduleIndex is what depmod wrote for one kernel: each module's file and
// its dependencies (modules.dep), and which modules are built in.
type moduleIndex struct {
	path    map[string]string   // name -> path relative to /lib/modules/RELEASE
	deps    map[string][]string // name -> dependency names
	builtin map[string]bool
}

// modName turns a module path or name into the kernel's canonical name:
// "kernel/crypto/ghash-generic.ko" -> "ghash_generic".
func modName(s string) string {
	s = filepath.Base(s)
	for _, ext := range []string{".xz", ".zst", ".gz"} {
		s = strings.TrimSuffix(s, ext)
	}
	return strings.ReplaceAll(strings.TrimSuffix(s, ".ko"), "-", "_")
}

// readModuleIndex reads modules.dep and modules.builtin from dir
// (/lib/modules/RELEASE of the guest root).
func readModuleIndex(dir string) (*moduleIndex, error) {
	ix := &moduleIndex{path: map[string]string{}, deps: map[string][]string{}, builtin: map[string]bool{}}
	err := eachLine(filepath.Join(dir, "modules.dep"), func(line string) error {
		mod, deps, ok := strings.Cut(line, ":")
		if !ok {
			return fmt.Errorf("line %q has no ':'", line)
		}
		name := modName(mod)
		ix.path[name] = mod
		for _, d := range strings.Fields(deps) {
			ix.deps[name] = append(ix.deps[name], modName(d))
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read modules.dep: %w; depmod must run on the guest root first", err)
	}
	err = eachLine(filepath.Join(dir, "modules.builtin"), func(line string) error {
		ix.builtin[modName(line)] = true
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read modules.builtin: %w", err)
	}
	return ix, nil
}

func eachLine(path string, fn func(string) error) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if err := fn(line); err != nil {
			return fmt.Errorf("%s:%d: %w", path, n, err)
		}
	}
	return sc.Err()
}

// loadOrder returns the modules to insmod, dependencies first, so that
// every root is loaded. Built-in modules are left out; an unknown root is
// an error (the module list names something this kernel does not have).
func (ix *moduleIndex) loadOrder(roots []string) ([]string, error) {
	var order []string
	state := map[string]int{} // 1 visiting, 2 done
	var visit func(name, from string) error
	visit = func(name, from string) error {
		switch state[name] {
		case 1:
			return fmt.Errorf("dependency cycle at module %s", name)
		case 2:
			return nil
		}
		if ix.builtin[name] {
			state[name] = 2
			return nil
		}
		if _, ok := ix.path[name]; !ok {
			return fmt.Errorf("module %s (needed by %s) is neither in modules.dep nor built in; add its directory to the guest's module list", name, from)
		}
		state[name] = 1
		for _, d := range ix.deps[name] {
			if err := visit(d, name); err != nil {
				return err
			}
		}
		state[name] = 2
		order = append(order, name)
		return nil
	}
	for _, r := range roots {
		if err := visit(modName(r), "the initramfs"); err != nil {
			return nil, err
		}
	}
	return order, nil
}
