package oe

import "github.com/obol-ipsec/obol/internal/policy"

func groupConfig(name, cidr string) policy.GroupConfig {
	return policy.GroupConfig{Group: name, CIDRs: []string{cidr}}
}
