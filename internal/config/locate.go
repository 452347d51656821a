package config

import (
	"strconv"
	"strings"
)

// keyLines maps every key of a TOML document to the line it is defined on.
// BurntSushi/toml keeps positions private, so unknown keys and cross-field
// errors are located by this scan of the text. Paths index arrays of tables:
// "conn[1].child[0].mode". A table header maps to its own line.
type keyLines struct {
	lines map[string]int
	// plain maps an index-free path ("conn.child.mode") to its lines in
	// document order, for the keys the decoder reports without indices.
	plain map[string][]int
}

// scanKeys indexes doc. It never fails: text it cannot read is skipped, and
// the decoder reports syntax errors with their own positions.
func scanKeys(doc string) keyLines {
	kl := keyLines{lines: map[string]int{}, plain: map[string][]int{}}
	arrays := map[string]int{} // resolved array-table path -> current index
	var table []string         // resolved path segments of the current table
	inMultiline := ""          // closing delimiter of a multi-line string
	depth := 0                 // open brackets of a multi-line array or inline table

	add := func(resolved []string, plain []string, line int) {
		p := strings.Join(resolved, ".")
		if _, ok := kl.lines[p]; !ok {
			kl.lines[p] = line
		}
		pp := strings.Join(plain, ".")
		kl.plain[pp] = append(kl.plain[pp], line)
	}
	// resolve turns header segments into a path with the current index of
	// each array of tables it passes through.
	resolve := func(segs []string, upto int) ([]string, []string) {
		var res, plain []string
		for i, s := range segs[:upto] {
			plain = append(plain, s)
			res = append(res, s)
			if n, ok := arrays[strings.Join(res, ".")]; ok && i < upto {
				res[len(res)-1] = s + "[" + strconv.Itoa(n) + "]"
			}
		}
		return res, plain
	}

	for i, raw := range strings.Split(doc, "\n") {
		line := i + 1
		s := raw
		if inMultiline != "" {
			if idx := strings.Index(s, inMultiline); idx >= 0 {
				s = s[idx+len(inMultiline):]
				inMultiline = ""
			} else {
				continue
			}
		}
		if depth > 0 {
			depth += bracketDelta(s)
			if depth < 0 {
				depth = 0
			}
			continue
		}
		s = strings.TrimSpace(stripComment(s))
		if s == "" {
			continue
		}
		switch {
		case strings.HasPrefix(s, "[["):
			end := strings.Index(s, "]]")
			if end < 0 {
				continue
			}
			segs := splitKey(s[2:end])
			if len(segs) == 0 {
				continue
			}
			parent, plainParent := resolve(segs, len(segs)-1)
			arrPath := strings.Join(append(append([]string{}, parent...), segs[len(segs)-1]), ".")
			if n, ok := arrays[arrPath]; ok {
				arrays[arrPath] = n + 1
			} else {
				arrays[arrPath] = 0
			}
			// A new element forgets the indices of arrays nested in the old one.
			for k := range arrays {
				if strings.HasPrefix(k, arrPath+"[") || strings.HasPrefix(k, arrPath+".") {
					delete(arrays, k)
				}
			}
			last := segs[len(segs)-1]
			table = append(parent, last+"["+strconv.Itoa(arrays[arrPath])+"]")
			add(table, append(plainParent, last), line)
		case strings.HasPrefix(s, "["):
			end := strings.Index(s, "]")
			if end < 0 {
				continue
			}
			segs := splitKey(s[1:end])
			if len(segs) == 0 {
				continue
			}
			res, plain := resolve(segs, len(segs))
			table = res
			add(table, plain, line)
		default:
			eq := keyEnd(s)
			if eq < 0 {
				continue
			}
			segs := splitKey(s[:eq])
			if len(segs) == 0 {
				continue
			}
			full := append(append([]string{}, table...), segs...)
			add(full, append(stripIndices(table), segs...), line)
			rest := s[eq+1:]
			for _, d := range []string{`"""`, `'''`} {
				if strings.Count(rest, d)%2 == 1 {
					inMultiline = d
				}
			}
			if inMultiline == "" {
				depth = bracketDelta(rest)
				if depth < 0 {
					depth = 0
				}
			}
		}
	}
	return kl
}

// line returns the line of a resolved path, or of its nearest known parent.
func (kl keyLines) line(path string) int {
	for p := path; p != ""; {
		if n, ok := kl.lines[p]; ok {
			return n
		}
		i := strings.LastIndexAny(p, ".[")
		if i < 0 {
			break
		}
		p = p[:i]
	}
	return 0
}

func stripIndices(segs []string) []string {
	out := make([]string, len(segs))
	for i, s := range segs {
		if j := strings.IndexByte(s, '['); j >= 0 {
			s = s[:j]
		}
		out[i] = s
	}
	return out
}

// stripComment drops a # comment that is not inside a string.
func stripComment(s string) string {
	var q byte
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case q != 0:
			if c == '\\' && q == '"' {
				i++
			} else if c == q {
				q = 0
			}
		case c == '"' || c == '\'':
			q = c
		case c == '#':
			return s[:i]
		}
	}
	return s
}

// keyEnd returns the index of the '=' that ends the key part, or -1.
func keyEnd(s string) int {
	var q byte
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case q != 0:
			if c == q {
				q = 0
			}
		case c == '"' || c == '\'':
			q = c
		case c == '=':
			return i
		}
	}
	return -1
}

// splitKey splits a dotted key, unquoting quoted parts.
func splitKey(s string) []string {
	var segs []string
	for _, part := range splitOutsideQuotes(s) {
		part = strings.TrimSpace(part)
		if len(part) >= 2 && (part[0] == '"' || part[0] == '\'') && part[len(part)-1] == part[0] {
			part = part[1 : len(part)-1]
		}
		if part == "" {
			return nil
		}
		segs = append(segs, part)
	}
	return segs
}

func splitOutsideQuotes(s string) []string {
	var parts []string
	var q byte
	start := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case q != 0:
			if c == q {
				q = 0
			}
		case c == '"' || c == '\'':
			q = c
		case c == '.':
			parts = append(parts, s[start:i])
			start = i + 1
		}
	}
	return append(parts, s[start:])
}

// bracketDelta counts [ and { minus ] and } outside strings and comments.
func bracketDelta(s string) int {
	s = stripComment(s)
	d := 0
	var q byte
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case q != 0:
			if c == '\\' && q == '"' {
				i++
			} else if c == q {
				q = 0
			}
		case c == '"' || c == '\'':
			q = c
		case c == '[' || c == '{':
			d++
		case c == ']' || c == '}':
			d--
		}
	}
	return d
}
