package labels

import (
	"context"
	"net/netip"
	"testing"

	"github.com/BurntSushi/toml"

	"github.com/obol-ipsec/obol/plugins"
)

// TestTOML: the struct tags read the documented example, every key used.
func TestTOML(t *testing.T) {
	var file struct {
		Labels Config `toml:"labels"`
	}
	md, err := toml.DecodeFile("testdata/example.toml", &file)
	if err != nil {
		t.Fatal(err)
	}
	if u := md.Undecoded(); len(u) > 0 {
		t.Fatalf("keys the struct does not know: %v", u)
	}
	c := file.Labels
	if c.Mode != "auto" || len(c.Allow) != 1 || len(c.Entries) != 2 || c.Entries[0].RemotePorts != "443" ||
		!c.Entries[0].Required || len(c.Entries[0].Labels) != 2 || c.Entries[1].DOI != "smack" {
		t.Fatalf("decoded %+v", c)
	}
	p, err := New(c, FixedDetector(false))
	if err != nil {
		t.Fatal(err)
	}
	d, err := p.Authorize(context.Background(), plugins.LabelRequest{
		Flow:  plugins.Flow{Local: netip.MustParsePrefix("10.1.0.9/32"), Remote: netip.MustParsePrefix("10.2.0.9/32"), Protocol: 6, RemotePort: 443},
		Label: "system_u:system_r:httpd_t:s5",
	})
	if err != nil || d.Allowed || d.Reason != `label system_u:system_r:httpd_t:s5 may not use entry "web": its level s5 is above the entry's high s3:c0.c127` {
		t.Errorf("%+v %v", d, err)
	}
}
