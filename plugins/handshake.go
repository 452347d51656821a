package plugins

import goplugin "github.com/hashicorp/go-plugin"

// ProtocolVersion is the version of the module contracts served over
// go-plugin. A plugin built for another version is refused at start with
// go-plugin's "incompatible API version" error, naming both versions.
const ProtocolVersion = 1

// Handshake is shared by obold and every external module binary. The cookie
// keeps a module binary from being run by hand as if it were a program.
var Handshake = goplugin.HandshakeConfig{
	ProtocolVersion:  ProtocolVersion,
	MagicCookieKey:   "OBOL_PLUGIN",
	MagicCookieValue: "obol-module-contract",
}
