//go:build unix

package pybridge

import "syscall"

// fdWriter writes to a file descriptor the caller owns (Python's standard
// error). Unlike an *os.File it has no finalizer that would close the
// descriptor when collected.
type fdWriter int

func (w fdWriter) Write(p []byte) (int, error) {
	n := 0
	for n < len(p) {
		k, err := syscall.Write(int(w), p[n:])
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return n, err
		}
		n += k
	}
	return n, nil
}
