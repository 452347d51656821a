package labels

import (
	"context"
	"errors"
	"testing"

	"github.com/obol-ipsec/obol/plugins"
)

func checkParseError(t *testing.T, in string, err error) {
	t.Helper()
	var pe *ParseError
	if !errors.As(err, &pe) {
		t.Fatalf("%q: error %T is not a *ParseError: %v", in, err, err)
	}
	if pe.Input != in || pe.Offset < -1 || pe.Offset > len(in) || pe.Msg == "" {
		t.Fatalf("%q: bad ParseError %+v", in, pe)
	}
}

// FuzzSELinux: the parser never panics; what it accepts prints
// canonically and parses back to an equal context; ranges are valid.
func FuzzSELinux(f *testing.F) {
	for _, s := range []string{
		"system_u:object_r:ipsec_spd_t:s0-s3:c0.c127", "system_u:system_r:httpd_t:s0:c1,c3.c5",
		"u:r:t:s2-s15:c0.c1023", "u:r:t", "u:r:t:s0:c0,c1,c2", "u:r:t:s0-s3:c5.c2", "u:r:t:s16",
		"u:r:t:s0:c1-s3", "u:r:t:s1:c0.c1023-s15:c0.c1023", "", ":", "u:r:t:", "u:r:t:s0:c1,,c2",
		"u:r:t:s0:c1022.c1023", "u:r:t:s0:c63,c64", "u:r:t:s0-s0",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		c, err := ParseSELinux(s)
		if err != nil {
			checkParseError(t, s, err)
			return
		}
		if c.MLS && !c.Range.High.Dominates(c.Range.Low) {
			t.Fatalf("%q: accepted a range whose high does not dominate its low", s)
		}
		str := c.String()
		c2, err := ParseSELinux(str)
		if err != nil {
			t.Fatalf("%q printed as %q, which does not parse: %v", s, str, err)
		}
		if c2 != c {
			t.Fatalf("%q -> %q -> %+v, not equal to %+v", s, str, c2, c)
		}
		if c2.String() != str {
			t.Fatalf("%q: String is not stable: %q then %q", s, str, c2.String())
		}
		if cc, err := ParseContext(DOISELinux, s); err != nil || cc.String() != str {
			t.Fatalf("%q: ParseContext disagrees: %v %v", s, cc, err)
		}
	})
}

// FuzzRange: levels and ranges alone, where most of the grammar is.
func FuzzRange(f *testing.F) {
	for _, s := range []string{"s0", "s0-s3:c0.c127", "s0:c1,c3.c5", "s15:c0.c1023", "s3-s0", "s0:c5.c2", "s0:c3,c1", "s01", "c1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		r, err := ParseRange(s)
		if err != nil {
			checkParseError(t, s, err)
			return
		}
		r2, err := ParseRange(r.String())
		if err != nil || r2 != r || !r.High.Dominates(r.Low) || !r.Within(r) {
			t.Fatalf("%q -> %q -> %v, %v", s, r.String(), r2, err)
		}
	})
}

// FuzzSmack: never panics; accepted labels obey the kernel's rules and
// print unchanged.
func FuzzSmack(f *testing.F) {
	for _, s := range []string{"WebData", "*", "^", "_", "@", "-x", "a b", "a/b", `a"b`, "x:y:z", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		c, err := ParseSmack(s)
		if err != nil {
			checkParseError(t, s, err)
			return
		}
		if c.String() != s || len(s) == 0 || len(s) > MaxSmackLen || s[0] == '-' {
			t.Fatalf("%q accepted as %q", s, c)
		}
		for i := 0; i < len(s); i++ {
			if b := s[i]; b <= ' ' || b > '~' || b == '/' || b == '"' || b == '\'' || b == '\\' {
				t.Fatalf("%q accepted with byte %q", s, b)
			}
		}
		if c2, err := ParseSmack(c.String()); err != nil || c2 != c {
			t.Fatalf("%q does not round-trip: %v", s, err)
		}
	})
}

// FuzzAuthorize: any label on any port gets a decision with a reason and
// never an error or a panic; a listed, allowed label is always allowed.
func FuzzAuthorize(f *testing.F) {
	f.Add(httpS1, uint16(443))
	f.Add("system_u:system_r:httpd_t:s5", uint16(443))
	f.Add("", uint16(0))
	f.Add("WebData\x00", uint16(53))
	p, err := New(authzConfig(), FixedDetector(false))
	if err != nil {
		f.Fatal(err)
	}
	flows := []plugins.Flow{
		flow("10.1.0.5/32", "10.2.0.7/32", 6, 0, 0),
		flow("fd00:1::5/128", "fd00:2::7/128", 17, 0, 0),
		flow("192.168.0.5/32", "192.168.1.5/32", 17, 0, 0),
		flow("10.1.0.0/16", "10.2.0.0/16", 0, 0, 0),
	}
	f.Fuzz(func(t *testing.T, label string, port uint16) {
		for _, fl := range flows {
			fl.RemotePort = port
			d, err := p.Authorize(context.Background(), plugins.LabelRequest{Flow: fl, Label: label})
			if err != nil || d.Reason == "" || (d.LabelMode != "simple" && d.LabelMode != "selinux") {
				t.Fatalf("%q on %v: %+v, %v", label, fl, d, err)
			}
		}
	})
}
