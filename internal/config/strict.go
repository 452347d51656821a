package config

import (
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"

	"github.com/BurntSushi/toml"
)

// Doc is a decoded TOML document that can still say where its keys are, so
// checks made after decoding report FILE:LINE too.
type Doc struct {
	File string
	kl   keyLines
}

// Errorf makes a located error for the key at path (e.g.
// "conn[1].child[0].mode"); the line is the key's, or its nearest parent's.
func (d *Doc) Errorf(path, format string, args ...any) *Error {
	return &Error{File: d.File, Line: d.kl.line(path), Msg: fmt.Sprintf(format, args...)}
}

// Decode decodes data into v (a pointer to a struct with toml tags)
// strictly: a syntax error, a wrong type or a bad value (an UnmarshalText
// error) is reported at its line, and every key not in v's schema is
// reported too, case-sensitively, with a did-you-mean hint. The error is
// errors.Join of *Error values.
func Decode(path string, data []byte, v any) (*Doc, error) {
	doc := string(data)
	md, err := toml.Decode(doc, v)
	if err != nil {
		return nil, decodeError(path, err)
	}
	d := &Doc{File: path, kl: scanKeys(doc)}
	schema := schemaOf(reflect.TypeOf(v))
	var errs []error
	seen := map[string]int{}
	for _, k := range md.Keys() {
		parent := strings.Join(k[:len(k)-1], ".")
		plain := strings.Join(k, ".")
		n := seen[plain]
		seen[plain]++
		keys, parentKnown := schema[parent]
		if !parentKnown {
			continue // below a map, or reported at the unknown parent already
		}
		if keys == nil || slices.Contains(keys, k[len(k)-1]) {
			continue
		}
		line := 0
		if lines := d.kl.plain[plain]; n < len(lines) {
			line = lines[n]
		}
		errs = append(errs, &Error{File: path, Line: line, Msg: unknownKeyMsg(k, keys)})
	}
	return d, errors.Join(errs...)
}

// schemaOf lists the keys of every table of t by its index-free path ("" is
// the top level). A map field's table is absent: its keys are free-form.
func schemaOf(t reflect.Type) map[string][]string {
	s := map[string][]string{}
	var walk func(t reflect.Type, path string)
	// fields lists a struct's keys, an embedded struct's keys as its own.
	var fields func(t reflect.Type, path string) []string
	fields = func(t reflect.Type, path string) []string {
		keys := []string{}
		for i := 0; i < t.NumField(); i++ {
			f := t.Field(i)
			name, _, _ := strings.Cut(f.Tag.Get("toml"), ",")
			if name == "-" || !f.IsExported() {
				continue
			}
			if f.Anonymous && name == "" && f.Type.Kind() == reflect.Struct {
				keys = append(keys, fields(f.Type, path)...)
				continue
			}
			if name == "" {
				name = f.Name
			}
			keys = append(keys, name)
			sub := name
			if path != "" {
				sub = path + "." + name
			}
			walk(f.Type, sub)
		}
		return keys
	}
	walk = func(t reflect.Type, path string) {
		for t.Kind() == reflect.Pointer || t.Kind() == reflect.Slice || t.Kind() == reflect.Array {
			t = t.Elem()
		}
		if t.Kind() != reflect.Struct || implementsText(t) {
			return
		}
		s[path] = fields(t, path)
	}
	walk(t, "")
	return s
}

func implementsText(t reflect.Type) bool {
	type textUnmarshaler interface{ UnmarshalText([]byte) error }
	return reflect.PointerTo(t).Implements(reflect.TypeFor[textUnmarshaler]())
}

// decodeError turns the decoder's error into FILE:LINE form.
func decodeError(path string, err error) error {
	var pe toml.ParseError
	if errors.As(err, &pe) {
		msg := pe.Message
		if pe.LastKey != "" && !strings.Contains(msg, pe.LastKey) {
			msg = fmt.Sprintf("%s: %s", pe.LastKey, msg)
		}
		if strings.Contains(msg, "incompatible types") {
			msg += "; check the value's type (strings are quoted, lists are [ ... ], durations are strings like \"10s\")"
		}
		return &Error{File: path, Line: pe.Position.Line, Msg: msg}
	}
	return &Error{File: path, Msg: err.Error()}
}

func unknownKeyMsg(k toml.Key, keys []string) string {
	parent := strings.Join(k[:len(k)-1], ".")
	name := k[len(k)-1]
	where := "at the top level"
	if parent != "" {
		where = "in [" + parent + "]"
	}
	if s := closest(name, keys); s != "" {
		return fmt.Sprintf("unknown key %q %s; did you mean %q?", name, where, s)
	}
	return fmt.Sprintf("unknown key %q %s; the keys there are %s", name, where, quoteList(keys))
}

// closest returns the known key within edit distance 2 of s, if any.
func closest(s string, keys []string) string {
	best, bestD := "", 3
	for _, k := range keys {
		if d := editDistance(strings.ToLower(s), k); d < bestD {
			best, bestD = k, d
		}
	}
	return best
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			c := 1
			if a[i-1] == b[j-1] {
				c = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+c)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
