package config

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestLoadGood(t *testing.T) {
	cfg, err := Load(filepath.Join("testdata", "good.toml"))
	if err != nil {
		t.Fatalf("good.toml: %v", err)
	}
	if time.Duration(cfg.Charon.CallTimeout) != 15*time.Second {
		t.Errorf("call_timeout = %v, want 15s", time.Duration(cfg.Charon.CallTimeout))
	}
	if len(cfg.Conns) != 1 || len(cfg.Conns[0].Children) != 2 {
		t.Fatalf("conns = %+v, want 1 conn with 2 children", cfg.Conns)
	}
	cn := cfg.Conns[0]
	if !filepath.IsAbs(cn.PSKFile) || !strings.HasSuffix(cn.PSKFile, "testdata/psk.txt") {
		t.Errorf("psk_file not resolved against the config's directory: %q", cn.PSKFile)
	}
	if got := cn.Children[0].RemoteTS; len(got) != 2 || got[1] != "10.3.0.0/24[tcp/443]" {
		t.Errorf("remote_ts = %v", got)
	}
	if cn.Children[1].LabelMode != "simple" {
		t.Errorf("label_mode = %q", cn.Children[1].LabelMode)
	}
	if cfg.Log.Format != "json" || cfg.Obold.ConnPrefix != "obol-" {
		t.Errorf("log/obold = %+v %+v", cfg.Log, cfg.Obold)
	}
}

func TestLoadLabels(t *testing.T) {
	cfg, err := Load(filepath.Join("testdata", "labels.toml"))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Labels.Mode != "simple" || len(cfg.Labels.Entries) != 1 || cfg.Conns[0].Children[0].LabelEntry != "hosts" {
		t.Fatalf("labels = %+v, child = %+v", cfg.Labels, cfg.Conns[0].Children[0])
	}
}

func TestDefaults(t *testing.T) {
	cfg, err := Parse("/etc/obol/empty.toml", nil)
	if err != nil {
		t.Fatalf("empty config: %v", err)
	}
	if cfg.Charon.VICISocket != "/var/run/charon.vici" || cfg.Obold.OnStop != OnStopRemove || cfg.Control.Mode != 0o600 {
		t.Errorf("defaults = %+v", cfg)
	}
}

// Each broken file must be refused at the right line with a message that
// says what is wrong and what to write instead.
func TestBrokenConfigs(t *testing.T) {
	tests := []struct {
		file string
		want []string // "LINE: substring", one per expected error, in order
	}{
		{"bad-unknown-key.toml", []string{`5: unknown key "conn_prefx" in [obold]; did you mean "conn_prefix"?`}},
		{"bad-type.toml", []string{`3: charon.call_timeout: `}},
		{"bad-duration.toml", []string{`9: "verbose" is not allowed here; write one of "debug", "info", "warn", "error"`}},
		{"bad-syntax.toml", []string{`2: `}},
		{"bad-child-key.toml", []string{`20: unknown key "lable" in [conn.child]; did you mean "label"?`}},
		{"bad-ts.toml", []string{`10: "10.1.0.0/33" is not a traffic selector`}},
		{"bad-missing-key-file.toml", []string{`8: cannot read key_file`, `11: cannot read public key`}},
		{"bad-duplicate-name.toml", []string{`12: conn name "same" is used twice`}},
		{"bad-prefix.toml", []string{`3: "keep" is not allowed here; write one of "remove", "leave"`}},
		{"bad-name.toml", []string{`2: "oe.10.2.0.10" is not a usable name`}},
		{"bad-case.toml", []string{`2: unknown key "Conn_Prefix" in [obold]; did you mean "conn_prefix"?`}},
		{"bad-label-above.toml", []string{`15: entry "hosts" lists label system_u:system_r:app_t:s5 but refuses it (level above the entry's high)`}},
		{"bad-label-entry.toml", []string{`25: label_entry takes its labels and label mode from [labels]`}},
		{"bad-auth.toml", []string{`7: "certificate" is not allowed here; write one of "pubkey", "psk"`}},
		{"bad-auth-methods.toml", []string{`3: unknown method "nope"`, `3: method "static" needs [auth.static] dir`, `5: plugin "corp" is not in auth.methods`, `7: plugin "/nonexistent/corp"`}},
		{"bad-plugin.toml", []string{`3: plugin "`, `7: is not an executable file`, `8: env entry "NOEQUALS" is not KEY=VALUE`, `10: settings without a plugin`}},
		{"bad-oe-ipv6.toml", []string{`5: address6 fe80::11 is not a global unicast address`}},
		{"bad-oe-no-address6.toml", []string{`15: 2001:db8::/32 is IPv6 but [oe] has no IPv6 address for IKE with peers there; add address6`}},
		{"bad-tokenapi-plugin.toml", []string{`2: a token API plugin without the token API`, `3: plugin "/nonexistent/obol-module"`}},
		{"bad-lower-group.toml", []string{`6: group "no-such-group-obol" does not exist`}},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			path := filepath.Join("testdata", tt.file)
			_, err := Load(path)
			if err == nil {
				t.Fatalf("%s was accepted", tt.file)
			}
			msgs := strings.Split(err.Error(), "\n")
			if len(msgs) != len(tt.want) {
				t.Fatalf("got %d errors, want %d:\n%v", len(msgs), len(tt.want), err)
			}
			for i, w := range tt.want {
				line, sub, _ := strings.Cut(w, ": ")
				if !strings.HasPrefix(msgs[i], path+":"+line+":") || !strings.Contains(msgs[i], sub) {
					t.Errorf("error %d = %q, want %s:%s: ...%s...", i, msgs[i], path, line, sub)
				}
			}
			var ce *Error
			if !errors.As(err, &ce) || ce.File != path || ce.Line == 0 {
				t.Errorf("error is not a located *config.Error: %#v", err)
			}
		})
	}
}

// A config with several problems reports all of them.
func TestAllProblemsReported(t *testing.T) {
	doc := `[obold]
conn_prefix = "has space"
typo = 1
[control]
socket = "relative.sock"
`
	_, err := Parse("/x/obold.toml", []byte(doc))
	if err == nil {
		t.Fatal("accepted")
	}
	for _, w := range []string{"/x/obold.toml:3: unknown key \"typo\"", "/x/obold.toml:2: conn_prefix \"has space\" is unusable", "/x/obold.toml:5: socket \"relative.sock\" is not an absolute path"} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("missing %q in:\n%v", w, err)
		}
	}
}

func TestScanKeys(t *testing.T) {
	doc := `top = 1 # comment
[a]
b = "x # not a comment"
"quoted.key" = 2
multi = """
c = not a key
"""
arr = [
  "d = not a key",
]
[[t]]
k = 1
[[t.u]]
v = 1
[[t]]
k = 2
[t.w]
z = 3
[[t.u]]
v = 2
`
	kl := scanKeys(doc)
	want := map[string]int{
		"top": 1, "a": 2, "a.b": 3, "a.quoted.key": 4, "a.multi": 5, "a.arr": 8,
		"t[0]": 11, "t[0].k": 12, "t[0].u[0]": 13, "t[0].u[0].v": 14,
		"t[1]": 15, "t[1].k": 16, "t[1].w": 17, "t[1].w.z": 18, "t[1].u[0].v": 20,
	}
	for p, line := range want {
		if got := kl.lines[p]; got != line {
			t.Errorf("line of %q = %d, want %d", p, got, line)
		}
	}
	if _, ok := kl.lines["a.c"]; ok {
		t.Error("a key inside a multi-line string was indexed")
	}
	if _, ok := kl.lines["a.d"]; ok {
		t.Error("a string inside a multi-line array was indexed")
	}
	if got := kl.line("t[1].w.missing"); got != 17 {
		t.Errorf("fallback to parent: got %d, want 17", got)
	}
}

func FuzzParse(f *testing.F) {
	for _, name := range []string{"good.toml", "bad-child-key.toml", "bad-syntax.toml", "bad-type.toml"} {
		if b, err := readTestdata(name); err == nil {
			f.Add(b)
		}
	}
	f.Add([]byte("[[conn]]\nname = \"x\"\n[[conn.child]]\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := Parse("/fuzz/obold.toml", data)
		if err == nil && cfg == nil {
			t.Fatal("nil config without error")
		}
		if err != nil {
			var ce *Error
			if !errors.As(err, &ce) {
				t.Fatalf("error without location: %v", err)
			}
		}
		_ = scanKeys(string(data)).line("conn[0].child[0].name")
	})
}
