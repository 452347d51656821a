package vici

import (
	"encoding/hex"
	"errors"
	"net/netip"
	"strconv"
	"testing"
	"time"

	govici "github.com/strongswan/govici/vici"
)

// The fuzz targets turn arbitrary bytes into messages with the test codec
// (the VICI element encoding), so the fuzzer can change keys, values, lists
// and nesting. Decoders must not panic, and every error must be a
// MalformedError.

func seedListSA(f *testing.F) {
	f.Add(encodeBody(listSA("gw-gw", sampleIKE(), "net-4", sampleChild())))
	f.Add(encodeBody(listSA("gw-gw", sampleIKE(), "net-4", sampleChild("label", "zz"), "net-5", sampleChild("uniqueid", "5"))))
	f.Add(encodeBody(msg("oe", msg("uniqueid", "1", "remote-host", "%any"))))
	f.Add([]byte{})
}

func checkDecodeErr(t *testing.T, err error) {
	t.Helper()
	if err != nil && !errors.Is(err, ErrMalformed) {
		t.Fatalf("error is not ErrMalformed: %v", err)
	}
}

func FuzzDecodeListSA(f *testing.F) {
	seedListSA(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := decodeBody(data)
		if err != nil {
			return
		}
		sas, err := decodeListSA(m)
		checkDecodeErr(t, err)
		if err == nil && len(sas) != len(m.Keys()) {
			t.Fatalf("%d sections, %d SAs", len(m.Keys()), len(sas))
		}
	})
}

func FuzzDecodeEvent(f *testing.F) {
	for i, n := range eventNames {
		f.Add(byte(i), encodeBody(sampleEvent(string(n), "seed")))
	}
	f.Add(byte(0), encodeBody(msg("up", "yes")))
	f.Fuzz(func(t *testing.T, which byte, data []byte) {
		m, err := decodeBody(data)
		if err != nil {
			return
		}
		name := string(eventNames[int(which)%len(eventNames)])
		ev, err := decodeEvent(name, m, time.Time{})
		checkDecodeErr(t, err)
		if err != nil {
			return
		}
		switch ev.Kind {
		case EventLog:
			if ev.Log == nil {
				t.Fatal("log event without Log")
			}
		case EventIKERekey, EventChildRekey:
			if ev.SA == nil || ev.Old == nil {
				t.Fatal("rekey without both SAs")
			}
		default:
			if ev.SA == nil {
				t.Fatal("updown without SA")
			}
		}
	})
}

func FuzzDecodeListConn(f *testing.F) {
	f.Add(encodeBody(msg("c", msg("local_addrs", []string{"%any"}, "local-1", msg("class", "public key"),
		"children", msg("net", msg("label", "6100", "local-ts", []string{"dynamic"}))))))
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := decodeBody(data)
		if err != nil {
			return
		}
		_, err = decodeListConn(m)
		checkDecodeErr(t, err)
	})
}

func FuzzDecodeStats(f *testing.F) {
	f.Add(encodeBody(msg("uptime", msg("running", "5 minutes", "since", "Nov 23 18:25:20 2026"),
		"ikesas", msg("total", "2", "half-open", "1"), "plugins", []string{"vici"})))
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := decodeBody(data)
		if err != nil {
			return
		}
		_, err = decodeStats(m)
		checkDecodeErr(t, err)
	})
}

// FuzzListSAValue puts an arbitrary value into one field of a realistic
// list-sa message and checks the decoder against a simple oracle: garbage
// in a typed field is an error, anything else decodes.
func FuzzListSAValue(f *testing.F) {
	keys := []string{"bytes-in", "use-in", "label", "esn", "encap", "cpi-in", "local-ts", "uniqueid", "install-time", "rekey-time",
		"remote-host", "local-port", "encr-keysize", "initiator", "established", "spi-in", "name"}
	for i := range keys {
		for _, v := range []string{"12", "-1", "yes", "7g", "192.0.2.1", ""} {
			f.Add(byte(i), v)
		}
	}
	ikeKeys := map[string]bool{"uniqueid": false, "remote-host": true, "local-port": true, "initiator": true, "established": true}
	f.Fuzz(func(t *testing.T, which byte, v string) {
		if len(v) > maxValue {
			return
		}
		key := keys[int(which)%len(keys)]
		var m *govici.Message
		if ikeKeys[key] {
			m = listSA("gw", sampleIKE(key, v), "net-4", sampleChild())
		} else {
			m = listSA("gw", sampleIKE(), "net-4", sampleChild(key, v))
		}
		_, err := decodeListSA(m)
		checkDecodeErr(t, err)
		if bad := garbage(key, v); bad != (err != nil) {
			t.Fatalf("%s = %q: error %v, oracle says garbage=%v", key, v, err, bad)
		}
	})
}

// garbage is the oracle for FuzzListSAValue.
func garbage(key, v string) bool {
	if key == "local-ts" {
		return true // a value where a list belongs
	}
	if v == "" {
		return false // the decoders treat an empty value as missing
	}
	switch key {
	case "bytes-in":
		_, err := strconv.ParseUint(v, 10, 64)
		return err != nil
	case "uniqueid":
		_, err := strconv.ParseUint(v, 10, 32)
		return err != nil
	case "local-port", "encr-keysize":
		_, err := strconv.ParseUint(v, 10, 16)
		return err != nil
	case "use-in", "install-time", "rekey-time", "established":
		n, err := strconv.ParseInt(v, 10, 64)
		return err != nil || n > 9223372036 || n < -9223372036
	case "label":
		_, err := hex.DecodeString(v)
		return err != nil
	case "esn", "encap", "initiator":
		switch v {
		case "yes", "no", "1", "0", "true", "false":
			return false
		}
		return true
	case "remote-host":
		if v == "%any" || v == "%any6" {
			return false
		}
		_, err := netip.ParseAddr(v)
		return err != nil
	}
	return false
}
