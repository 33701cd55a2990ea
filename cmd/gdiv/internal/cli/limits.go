package cli

import (
	"flag"
	"fmt"
	"strconv"
	"strings"
)

// DefaultMaxBytes is the default of every command's --max-bytes: 4 GiB.
const DefaultMaxBytes ByteSize = 4 << 30

// ByteSize is a number of bytes given on the command line: an integer with
// an optional binary suffix, K, M, G, T (or KiB, MiB, GiB, TiB; any case),
// so 4G = 4GiB = 4294967296. It implements flag.Value.
type ByteSize int64

var byteSuffixes = []struct {
	s     string
	shift uint
}{{"kib", 10}, {"mib", 20}, {"gib", 30}, {"tib", 40}, {"k", 10}, {"m", 20}, {"g", 30}, {"t", 40}, {"b", 0}}

// String prints the size with the largest exact binary suffix ("4GiB").
func (b *ByteSize) String() string {
	v := int64(*b)
	for _, u := range []struct {
		s     string
		shift uint
	}{{"TiB", 40}, {"GiB", 30}, {"MiB", 20}, {"KiB", 10}} {
		if v != 0 && v%(1<<u.shift) == 0 {
			return strconv.FormatInt(v>>u.shift, 10) + u.s
		}
	}
	return strconv.FormatInt(v, 10)
}

// Set parses s; the size must be at least 1 byte.
func (b *ByteSize) Set(s string) error {
	t := strings.ToLower(strings.TrimSpace(s))
	shift := uint(0)
	for _, u := range byteSuffixes {
		if strings.HasSuffix(t, u.s) {
			t, shift = strings.TrimSpace(strings.TrimSuffix(t, u.s)), u.shift
			break
		}
	}
	v, err := strconv.ParseInt(t, 10, 64)
	if err != nil || v < 1 || v > (1<<62)>>shift {
		return fmt.Errorf("%q: want a size in bytes ≥ 1, e.g. 8G, 512MiB or 1000000", s)
	}
	*b = ByteSize(v << shift)
	return nil
}

// AddMaxBytes defines --max-bytes on fs (default DefaultMaxBytes).
func AddMaxBytes(fs *flag.FlagSet) *ByteSize {
	b := DefaultMaxBytes
	fs.Var(&b, "max-bytes", "the most memory a command allocates for input and arrays")
	return &b
}

// CheckAlloc returns a usage error when what, needing about need bytes
// (a float64, so that huge counts do not overflow), exceeds the limit: the
// command refuses before allocating, instead of dying of Go's fatal
// "out of memory".
func CheckAlloc(limit ByteSize, need float64, what string) error {
	if need > float64(limit) {
		return Usagef("%s needs about %s, more than --max-bytes %s; raise --max-bytes to allow it", what, humanBytes(need), limit.String())
	}
	return nil
}

func humanBytes(v float64) string {
	for _, u := range []struct {
		s string
		f float64
	}{{"PiB", 1 << 50}, {"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}} {
		if v >= u.f {
			return strconv.FormatFloat(v/u.f, 'f', 1, 64) + " " + u.s
		}
	}
	return strconv.FormatFloat(v, 'f', 0, 64) + " bytes"
}
