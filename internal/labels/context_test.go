package labels

import (
	"errors"
	"strings"
	"testing"
)

func TestParseSELinux(t *testing.T) {
	tests := []struct{ in, want string }{
		{"system_u:object_r:ipsec_spd_t:s0-s3:c0.c127", "system_u:object_r:ipsec_spd_t:s0-s3:c0.c127"},
		{"system_u:system_r:httpd_t:s0:c1,c3.c5", "system_u:system_r:httpd_t:s0:c1,c3.c5"},
		{"system_u:system_r:httpd_t:s2-s15:c0.c1023", "system_u:system_r:httpd_t:s2-s15:c0.c1023"},
		{"user_u:user_r:user_t", "user_u:user_r:user_t"},
		{"u.1:r.2:T_3.x:s0", "u.1:r.2:T_3.x:s0"},
		{"u:r:t:s0:c0,c1,c2", "u:r:t:s0:c0.c2"},
		{"u:r:t:s0-s0", "u:r:t:s0"},
	}
	for _, tc := range tests {
		c, err := ParseSELinux(tc.in)
		if err != nil {
			t.Errorf("ParseSELinux(%q): %v", tc.in, err)
			continue
		}
		if got := c.String(); got != tc.want {
			t.Errorf("ParseSELinux(%q).String() = %q, want %q", tc.in, got, tc.want)
		}
	}
	c, _ := ParseSELinux("system_u:object_r:ipsec_spd_t:s0-s3:c0.c127")
	if c.User != "system_u" || c.Role != "object_r" || c.Type != "ipsec_spd_t" || !c.MLS ||
		c.Range.Low.Sens != 0 || c.Range.High.Sens != 3 || c.Range.High.Cats.Len() != 128 {
		t.Errorf("fields wrong: %+v", c)
	}
	if c, _ := ParseSELinux("u:r:t"); c.MLS {
		t.Error("context without a level has MLS set")
	}
}

// TestSELinuxErrors: every malformed context is refused, saying where and
// what to write.
func TestSELinuxErrors(t *testing.T) {
	tests := []struct{ in, want string }{
		{"", `"": empty SELinux context; write user:role:type:level, e.g. system_u:system_r:httpd_t:s0`},
		{"httpd_t", `"httpd_t": has 1 of the 3 fields user:role:type (then :level); write e.g. system_u:system_r:httpd_t:s0`},
		{"system_r:httpd_t", `has 2 of the 3 fields`},
		{"u:r:t:", `"u:r:t:" at byte 6: empty level after ':'; write a level such as s0, or drop the trailing ':'`},
		{":r:t:s0", `at byte 0: the user is empty; write one, e.g. system_u`},
		{"u::t:s0", `at byte 2: the role is empty; write one, e.g. system_r`},
		{"u:r::s0", `at byte 4: the type is empty; write one, e.g. httpd_t`},
		{"sys-tem_u:r:t:s0", `at byte 3: user "sys-tem_u" has '-'; users, roles and types use only letters, digits, '_' and '.'`},
		{"u:r$:t:s0", `at byte 3: role "r$" has '$'`},
		{"u:r:httpd-t:s0", `at byte 9: type "httpd-t" has '-'`},
		{"u:r:t:s0 ", `at byte 8: byte ' ' is not allowed: SELinux contexts are printable ASCII without spaces`},
		{"u:r:\tt:s0", `at byte 4: byte '\t' is not allowed`},
		{"u:r:t:s0\x00", `at byte 8: byte '\x00' is not allowed`},
		{"u:r:t:s0\xff", `at byte 8: byte 'ÿ' is not allowed`},
		{"u:r:t:s16", `"u:r:t:s16" at byte 6: sensitivity s16 is out of range; write s0 to s15`},
		{"system_u:object_r:ipsec_spd_t:s0-s3:c5.c2", `at byte 36: category range c5.c2 runs backwards; write c2.c5`},
		{"u:r:t:s3-s0", `at byte 9: high level s0 is below low level s3; write the low level first: s0-s3`},
		{"u:r:t:s0:c1024", `at byte 9: category c1024 is out of range`},
		{"u:r:t:s0:c1,c1", `at byte 12: category c1 is listed twice`},
		{"u:r:t:c0", `at byte 6: the level starts with category "c0"`},
		{"u:r:t:s0-s1-s2", `at byte 11: a range has one '-'`},
		{strings.Repeat("u", 4097), `context is 4097 bytes; at most 4096 are allowed`},
	}
	for _, tc := range tests {
		_, err := ParseSELinux(tc.in)
		if err == nil {
			t.Errorf("ParseSELinux(%q) accepted it", tc.in)
			continue
		}
		if !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ParseSELinux(%q):\n got %s\nwant %s", tc.in, err, tc.want)
		}
		var pe *ParseError
		if !errors.As(err, &pe) || pe.DOI != DOISELinux || pe.Input != tc.in {
			t.Errorf("ParseSELinux(%q): error %#v lacks DOI or input", tc.in, err)
		}
	}
}

func TestParseSmack(t *testing.T) {
	good := []struct{ in, special string }{
		{"WebData", ""}, {"a", ""}, {"*", "star"}, {"^", "hat"}, {"_", "floor"}, {"@", "web"},
		{"a-b", ""}, {"x:y:z", ""}, {strings.Repeat("L", 255), ""}, {"~!#$%&()+,.;<=>?[]`{|}", ""},
	}
	for _, tc := range good {
		c, err := ParseSmack(tc.in)
		if err != nil {
			t.Errorf("ParseSmack(%q): %v", tc.in, err)
			continue
		}
		if c.DOI() != DOISmack || c.String() != tc.in || c.SmackSpecial() != tc.special {
			t.Errorf("ParseSmack(%q) = %v %q special %q", tc.in, c.DOI(), c, c.SmackSpecial())
		}
	}
	bad := []struct{ in, want string }{
		{"", `"": empty Smack label; write a label such as "WebData"`},
		{strings.Repeat("L", 256), `Smack label is 256 bytes; Smack allows at most 255: shorten it`},
		{"-web", `"-web" at byte 0: Smack labels may not start with '-'`},
		{"web data", `"web data" at byte 3: byte ' ' is not allowed: Smack labels hold printable ASCII without spaces`},
		{"web\tdata", `at byte 3: byte '\t' is not allowed`},
		{"web\x7f", `at byte 3: byte '\x7f' is not allowed`},
		{"wéb", `at byte 1: byte`},
		{"a/b", `at byte 1: Smack labels may not contain '/'`},
		{`a"b`, `Smack labels may not contain '"'`},
		{"a'b", `Smack labels may not contain '\''`},
		{`a\b`, `Smack labels may not contain '\\'`},
	}
	for _, tc := range bad {
		_, err := ParseSmack(tc.in)
		if err == nil {
			t.Errorf("ParseSmack(%q) accepted it", tc.in)
			continue
		}
		if !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ParseSmack(%q):\n got %s\nwant %s", tc.in, err, tc.want)
		}
	}
}

func TestParseOpaque(t *testing.T) {
	for _, in := range []string{"x", "any thing at all / \\ ' \"", "\xff\xfe", strings.Repeat("o", 4096)} {
		c, err := ParseOpaque(in)
		if err != nil || c.String() != in || c.DOI() != DOIOpaque {
			t.Errorf("ParseOpaque(%q) = %q, %v", in, c, err)
		}
	}
	bad := []struct{ in, want string }{
		{"", `empty label`},
		{strings.Repeat("o", 4097), `label is 4097 bytes; at most 4096 are allowed`},
		{"ab\x00c", `at byte 2: NUL byte in label`},
	}
	for _, tc := range bad {
		if _, err := ParseOpaque(tc.in); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ParseOpaque(%q) = %v, want %s", tc.in, err, tc.want)
		}
	}
}

func TestParseContext(t *testing.T) {
	a, err := ParseContext(DOISELinux, "u:r:t:s0:c0,c1,c2")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := ParseContext(DOISELinux, "u:r:t:s0:c0.c2")
	if !a.Equal(b) || a != b {
		t.Error("same SELinux context, other spelling: not equal")
	}
	if se, ok := a.SELinux(); !ok || se.Type != "t" {
		t.Errorf("SELinux() = %v, %v", se, ok)
	}
	s, _ := ParseContext(DOISmack, "x:y:z")
	o, _ := ParseContext(DOIOpaque, "x:y:z")
	if s.Equal(o) {
		t.Error("a Smack and an opaque label with the same bytes are equal")
	}
	if _, ok := s.SELinux(); ok {
		t.Error("Smack context claims SELinux parts")
	}
	if !(Context{}).IsZero() || a.IsZero() {
		t.Error("IsZero wrong")
	}
	if _, err := ParseContext("cipso", "x"); err == nil || !strings.Contains(err.Error(), `write "selinux", "smack" or "opaque"`) {
		t.Errorf("unknown DOI: %v", err)
	}
	if _, err := ParseContext(DOISmack, "-x"); err == nil {
		t.Error("bad Smack label accepted through ParseContext")
	}
	if _, err := ParseContext(DOIOpaque, ""); err == nil {
		t.Error("empty opaque label accepted through ParseContext")
	}
	if _, err := ParseContext(DOISELinux, "x"); err == nil {
		t.Error("bad SELinux context accepted through ParseContext")
	}
}

func TestQuoteShortens(t *testing.T) {
	_, err := ParseSmack(strings.Repeat("L", 300))
	if err == nil || len(err.Error()) > 200 {
		t.Errorf("long input echoed in full: %v", err)
	}
}
