//go:build tools

// Package tools pins the build tools of the Python extension: gopy, which
// generates the CPython bindings of ./pybridge, and goimports, which gopy's
// generated code needs. It is a separate module because gopy v0.4.10 pins
// golang.org/x/tools v0.16.0, which does not compile with Go ≥ 1.23
// (golang/go#74462); this module raises x/tools to a version that does and
// that still needs only Go 1.24, so the tools build with any Go the project
// supports. Build them with
//
//	cd internal/tools && GOBIN=$PWD/../../.tools/bin go install github.com/go-python/gopy golang.org/x/tools/cmd/goimports
//
// (make py-install and setup.py do this).
package tools

import (
	_ "github.com/go-python/gopy"
	_ "golang.org/x/tools/cmd/goimports"
)
