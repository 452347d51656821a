package daemon

import (
	"strings"
	"testing"
)

func TestAcqExpiresAdvice(t *testing.T) {
	tests := []struct {
		value string
		warn  bool
	}{
		{"165", true}, // what charon sets
		{"30", true},  // the kernel's default
		{"5", false},
		{"1", false},
		{"", false},
		{"garbage", false},
	}
	for _, tc := range tests {
		got := acqExpiresAdvice(tc.value)
		if (got != "") != tc.warn {
			t.Errorf("acqExpiresAdvice(%q) = %q, want a warning: %v", tc.value, got, tc.warn)
		}
		if tc.warn && !strings.Contains(got, "xfrm_acq_expires = 1") {
			t.Errorf("advice for %q does not say what to set: %q", tc.value, got)
		}
	}
}
