// Command gocheck exits non-zero with a clear message unless the Go
// toolchain running it is at least the version gdiv needs. It is built by
// `make` before anything else, so an old Go fails with a sentence rather
// than with a compile error deep in a dependency.
package main

import (
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
)

const minMinor = 25 // Go 1.25: arrow-go v18 needs it

func main() {
	v := strings.TrimPrefix(runtime.Version(), "go")
	parts := strings.SplitN(v, ".", 3)
	if len(parts) >= 2 {
		major, err1 := strconv.Atoi(parts[0])
		minor, err2 := strconv.Atoi(strings.TrimFunc(parts[1], func(r rune) bool { return r < '0' || r > '9' }))
		if err1 == nil && err2 == nil && (major > 1 || minor >= minMinor) {
			return
		}
		if err1 == nil && err2 == nil {
			fmt.Fprintf(os.Stderr, "gdiv: Go %s is too old: need Go >= 1.%d\n", v, minMinor)
			os.Exit(1)
		}
	}
	// Development builds (devel +hash) are accepted.
}
