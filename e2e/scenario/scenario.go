// Package scenario holds the configurations the e2e tests and the demo
// load into the lab, so both show the same thing.
package scenario

import "fmt"

// SwanctlGateway is a site-to-site PSK tunnel "gw-gw" (child "net") between
// two gateways, written as an operator would for swanctl.
func SwanctlGateway(local, remote, localNet, remoteNet string) string {
	return fmt.Sprintf(`connections {
  gw-gw {
    version = 2
    local_addrs = %[1]s
    remote_addrs = %[2]s
    proposals = aes256-sha256-modp3072
    local {
      auth = psk
      id = %[1]s
    }
    remote {
      auth = psk
      id = %[2]s
    }
    children {
      net {
        local_ts = %[3]s
        remote_ts = %[4]s
        esp_proposals = aes256-sha256
      }
    }
  }
}
secrets {
  ike-gw {
    id-a = %[1]s
    id-b = %[2]s
    secret = "swanctl-lab-secret-0123456789"
  }
}
`, local, remote, localNet, remoteNet)
}

// OboldConfig is an obold config for a lab node: its VICI and control
// sockets, then extra TOML.
func OboldConfig(vici, control, extra string) string {
	return fmt.Sprintf(`[charon]
vici_socket = %q
[control]
socket = %q
%s`, vici, control, extra)
}

// OEHost is [oe] for a host doing OE by itself: private to peer, answering
// OE from the lab's internet. identity "" means its address; extraOE adds
// keys to [oe] (e.g. lifespans).
func OEHost(addr, identity, peer, keyFile, extraOE string) string {
	id := ""
	if identity != "" {
		id = fmt.Sprintf("identity = %q\n", identity)
	}
	return fmt.Sprintf(`
[oe]
address = %q
%skey_file = %q
%s
[oe.dns]
server = "192.0.2.53:53"
require_dnssec = true
[[oe.group]]
group = "private"
cidrs = ["%s/32"]
[[oe.group]]
group = "clear-or-private"
cidrs = ["192.0.2.0/24"]
`, addr, id, keyFile, extraOE, peer)
}
