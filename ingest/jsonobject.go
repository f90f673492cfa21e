package ingest

// isJSONObject reports whether b is one JSON object with nothing but
// whitespace around it: exactly what json.Valid says of text that starts
// with '{' (FuzzIsJSONObject holds the two together). It is written out
// because every accepted push is checked, and json.Valid, which steps a
// state machine through a function call per byte, was a tenth of what
// webhook_ingest itself spent on a push (BenchmarkIngestServeHTTP).
//
// Like json.Valid it does not check that strings are UTF-8, and it refuses
// nesting deeper than 10,000 levels. It needs no recursion, so a deeply
// nested body cannot exhaust the goroutine's stack.
func isJSONObject(b []byte) bool {
	i := skipSpace(b, 0)
	if i == len(b) || b[i] != '{' {
		return false
	}
	var buf [32]byte
	nest := buf[:0] // the open objects and arrays, innermost last
	for {
		// A value starts at or after b[i].
		if i = skipSpace(b, i); i == len(b) {
			return false
		}
		switch c := b[i]; c {
		case '{', '[':
			if len(nest) == maxNesting {
				return false
			}
			if i = skipSpace(b, i+1); i < len(b) && b[i] == closing(c) {
				i++ // empty: the whole value
				break
			}
			nest = append(nest, c)
			if c == '{' {
				if i = member(b, i); i < 0 {
					return false
				}
			}
			continue // with the container's first value
		case '"':
			i = stringEnd(b, i)
		case 't':
			i = literalEnd(b, i, "true")
		case 'f':
			i = literalEnd(b, i, "false")
		case 'n':
			i = literalEnd(b, i, "null")
		default:
			i = numberEnd(b, i)
		}
		if i < 0 {
			return false
		}
		// After a value: close containers, or go on to the next value.
		for {
			i = skipSpace(b, i)
			if len(nest) == 0 {
				return i == len(b)
			}
			if i == len(b) {
				return false
			}
			open := nest[len(nest)-1]
			if b[i] == ',' {
				i++
				if open == '{' {
					if i = member(b, i); i < 0 {
						return false
					}
				}
				break
			}
			if b[i] != closing(open) {
				return false
			}
			nest = nest[:len(nest)-1]
			i++
		}
	}
}

// maxNesting is encoding/json's limit on nested objects and arrays.
const maxNesting = 10000

// member checks a key and its colon at or after b[i] and returns the
// position after the colon.
func member(b []byte, i int) int {
	i = skipSpace(b, i)
	if i == len(b) || b[i] != '"' {
		return -1
	}
	if i = stringEnd(b, i); i < 0 {
		return -1
	}
	i = skipSpace(b, i)
	if i == len(b) || b[i] != ':' {
		return -1
	}
	return i + 1
}

func closing(open byte) byte {
	if open == '{' {
		return '}'
	}
	return ']'
}

func skipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\n' || b[i] == '\r' || b[i] == '\t') {
		i++
	}
	return i
}

// stringEnd returns the position after the string that opens at b[i].
func stringEnd(b []byte, i int) int {
	for i++; i < len(b); i++ {
		for i < len(b) && plainInString[b[i]] {
			i++
		}
		if i == len(b) {
			break
		}
		switch c := b[i]; {
		case c == '"':
			return i + 1
		case c < 0x20:
			return -1
		}
		// A backslash.
		i++
		if i == len(b) {
			return -1
		}
		switch b[i] {
		case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
		case 'u':
			if len(b)-i <= 4 || !isHex(b[i+1]) || !isHex(b[i+2]) || !isHex(b[i+3]) || !isHex(b[i+4]) {
				return -1
			}
			i += 4
		default:
			return -1
		}
	}
	return -1
}

// plainInString marks the bytes a string holds as they are: all but the
// quote, the backslash and control characters.
var plainInString = func() (t [256]bool) {
	for c := 0x20; c < 256; c++ {
		t[c] = c != '"' && c != '\\'
	}
	return t
}()

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

func literalEnd(b []byte, i int, lit string) int {
	if len(b)-i < len(lit) || string(b[i:i+len(lit)]) != lit {
		return -1
	}
	return i + len(lit)
}

// numberEnd returns the position after the number at b[i]:
// -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?
func numberEnd(b []byte, i int) int {
	if b[i] == '-' {
		i++
	}
	switch {
	case i < len(b) && b[i] == '0':
		i++
	case i < len(b) && '1' <= b[i] && b[i] <= '9':
		i = digitsEnd(b, i)
	default:
		return -1
	}
	if i < len(b) && b[i] == '.' {
		if i = digitsEnd(b, i+1); i < 0 {
			return -1
		}
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		return digitsEnd(b, i)
	}
	return i
}

// digitsEnd returns the position after one or more digits at b[i], or -1
// when there is none.
func digitsEnd(b []byte, i int) int {
	start := i
	for i < len(b) && '0' <= b[i] && b[i] <= '9' {
		i++
	}
	if i == start {
		return -1
	}
	return i
}
