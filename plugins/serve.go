package plugins

import (
	goplugin "github.com/hashicorp/go-plugin"
)

// Plugin kinds: the names under which a plugin binary serves a contract.
const (
	KindResolver = "resolver"
	KindLabels   = "labels"
	KindXFRM     = "xfrm"
	KindAuth     = "auth"
	KindTokenAPI = "tokenapi"
)

// Serve runs a module plugin binary: call it from main with the contracts
// the binary implements (nil fields are not served). It returns when obold
// ends the plugin. Run by hand, it prints that it is a plugin and exits.
func Serve(m Modules) { ServeWith(m, nil) }

// ServeWith is Serve for a binary that also serves an authentication method.
func ServeWith(m Modules, auth AuthMethod) {
	set := goplugin.PluginSet{}
	if m.Resolver != nil {
		set[KindResolver] = &ResolverPlugin{Impl: m.Resolver}
	}
	if m.Labels != nil {
		set[KindLabels] = &LabelPolicyPlugin{Impl: m.Labels}
	}
	if m.XFRM != nil {
		set[KindXFRM] = &XFRMCheckerPlugin{Impl: m.XFRM}
	}
	if m.TokenAPI != nil {
		set[KindTokenAPI] = &TokenAPIPlugin{Impl: m.TokenAPI}
	}
	if auth != nil {
		set[KindAuth] = &AuthMethodPlugin{Impl: auth}
	}
	goplugin.Serve(&goplugin.ServeConfig{HandshakeConfig: Handshake, Plugins: set, GRPCServer: goplugin.DefaultGRPCServer})
}
