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
			expectRun(t, tt.args, tt.code, []string{tt.stdout}, tt.stderr)
		})
	}
}

// expectRun runs obolctl with args and fails the test unless it exits with
// code, its stdout holds every string of stdout and its stderr holds stderr.
// It returns stdout.
func expectRun(t *testing.T, args []string, code int, stdout []string, stderr string) string {
	t.Helper()
	var out, errb bytes.Buffer
	got := run(args, &out, &errb)
	ok := got == code && strings.Contains(errb.String(), stderr)
	for _, s := range stdout {
		ok = ok && strings.Contains(out.String(), s)
	}
	if !ok {
		t.Fatalf("obolctl %v = %d\nstdout:\n%s\nstderr: %s\nwant %d, stdout with %q, stderr with %q", args, got, out.String(), errb.String(), code, stdout, stderr)
	}
	return out.String()
}
