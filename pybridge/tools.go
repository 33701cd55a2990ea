//go:build tools

package pybridge

// The code that gopy generates for this package imports gopyh, so the module
// must require gopy; this blank import keeps `go mod tidy` from dropping it.
// The gopy command itself is built from the separate module in
// internal/tools (it needs a newer golang.org/x/tools than gopy pins).
import _ "github.com/go-python/gopy/gopyh"
