//go:build !unix

package pybridge

import "os"

// fdWriter writes to the process's standard error, whatever the descriptor
// (on systems without Unix descriptors).
type fdWriter int

func (fdWriter) Write(p []byte) (int, error) { return os.Stderr.Write(p) }
