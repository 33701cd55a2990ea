//go:build !cgo

package pybridge

// viewArrow needs cgo (arrow-go's cdata package); the Python extension is
// always built with cgo, so this only keeps `CGO_ENABLED=0 go vet` working.
func viewArrow(what string, arrPtr, schPtr uintptr) (matrix, error) {
	return matrix{}, typeErrorf("%s: Arrow input needs a cgo build", what)
}
