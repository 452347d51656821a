package main

import (
	"bytes"
	"github.com/obol-ipsec/obol/internal/keyfile/keyfiletest"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// exampleKeyPath is where the example configs expect the OE key; the test
// points them at a key it makes instead.
const exampleKeyPath = "/etc/obol/oe-key.pem"

// TestExampleConfigs checks that every configs/*.toml passes
// obold --check-config.
func TestExampleConfigs(t *testing.T) {
	files, err := filepath.Glob("../../configs/*.toml")
	if err != nil || len(files) < 3 {
		t.Fatalf("configs/*.toml = %v, %v; want obold.toml and the OE examples", files, err)
	}
	dir := t.TempDir()
	key := keyfiletest.Ed25519(t, dir, "oe-key.pem", "")
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			data, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			text := string(data)
			if strings.HasPrefix(filepath.Base(f), "oe-") && !strings.Contains(text, exampleKeyPath) {
				t.Fatalf("%s does not use key_file = %q", f, exampleKeyPath)
			}
			// Same name, so messages read as for the real file.
			cfg := filepath.Join(dir, filepath.Base(f))
			if err := os.WriteFile(cfg, []byte(strings.ReplaceAll(text, exampleKeyPath, key)), 0o600); err != nil {
				t.Fatal(err)
			}
			var out, errb bytes.Buffer
			if code := run([]string{"--check-config", cfg}, &out, &errb); code != 0 {
				t.Errorf("obold --check-config %s = %d\n%s", f, code, errb.String())
			}
		})
	}
}
