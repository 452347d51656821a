package main

import (
	"bytes"
	"strings"
	"testing"
)

func TestCommandLine(t *testing.T) {
	tests := []struct {
		name           string
		args           []string
		code           int
		stdout, stderr string
	}{
		{"help", []string{"--help"}, 0, "", "--check-config FILE"},
		{"check good", []string{"--check-config", "../../internal/config/testdata/good.toml"}, 0, "good.toml: OK", ""},
		{"check example", []string{"--check-config", "../../configs/obold.toml"}, 0, "obold.toml: OK", ""},
		{"check bad", []string{"--check-config", "../../internal/config/testdata/bad-ts.toml"}, 1, "", `bad-ts.toml:10: conn.child.local_ts: "10.1.0.0/33" is not a traffic selector`},
		{"check missing", []string{"--check-config", "/nonexistent.toml"}, 1, "", "give obold --config with a readable TOML file"},
		{"run with bad config", []string{"--config", "../../internal/config/testdata/bad-type.toml"}, 1, "", "bad-type.toml:3:"},
		{"stray argument", []string{"serve"}, 2, "", `unexpected argument "serve"`},
		{"version", []string{"--version"}, 0, "obold ", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out, errb bytes.Buffer
			code := run(tt.args, &out, &errb)
			if code != tt.code || !strings.Contains(out.String(), tt.stdout) || !strings.Contains(errb.String(), tt.stderr) {
				t.Errorf("obold %v = %d\nstdout: %s\nstderr: %s\nwant %d, stdout with %q, stderr with %q", tt.args, code, out.String(), errb.String(), tt.code, tt.stdout, tt.stderr)
			}
		})
	}
}
