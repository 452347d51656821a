package main

import (
	"bytes"
	"strings"
	"testing"
)

func TestCLI(t *testing.T) {
	tests := []struct {
		name   string
		args   []string
		code   int
		stdout string
		stderr string
	}{
		{"help", []string{"--help"}, 0, "", "Commands:"},
		{"no command", nil, 2, "", "Usage:"},
		{"unknown", []string{"frobnicate"}, 2, "", `unknown command "frobnicate"`},
		{"sas help", []string{"sas", "--help"}, 0, "", "every IKE_SA"},
		{"config good", []string{"config", "check", "../../internal/config/testdata/good.toml"}, 0, "good.toml: OK", ""},
		{"config bad", []string{"config", "check", "../../internal/config/testdata/bad-child-key.toml"}, 1, "", `bad-child-key.toml:20: unknown key "lable"`},
		{"config no file", []string{"config", "check"}, 2, "", "Usage: obolctl config check FILE"},
		{"obold not running", []string{"--socket", "/nonexistent/obold.sock", "status"}, 1, "", "is obold running"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out, errb bytes.Buffer
			code := run(tt.args, &out, &errb)
			if code != tt.code || !strings.Contains(out.String(), tt.stdout) || !strings.Contains(errb.String(), tt.stderr) {
				t.Errorf("obolctl %v = %d\nstdout: %s\nstderr: %s\nwant %d, stdout with %q, stderr with %q", tt.args, code, out.String(), errb.String(), tt.code, tt.stdout, tt.stderr)
			}
		})
	}
}
