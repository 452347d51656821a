package pluginstest

import "testing"

// The fixtures pass their own suite in process; pluginhost runs the same
// suite against them served by a plugin process.
func TestBuiltInConformance(t *testing.T) {
	r, err := ResolverFixture()
	if err != nil {
		t.Fatal(err)
	}
	t.Run("resolver", func(t *testing.T) { Resolver(t, r) })
	lp, err := LabelsFixture()
	if err != nil {
		t.Fatal(err)
	}
	t.Run("labels", func(t *testing.T) { LabelPolicy(t, lp) })
	t.Run("xfrm", func(t *testing.T) { XFRMChecker(t, XFRMFixture()) })
	dir := t.TempDir()
	if err := WriteAuthFixture(dir); err != nil {
		t.Fatal(err)
	}
	t.Run("auth", func(t *testing.T) { AuthMethod(t, AuthFixture(dir)) })
}
