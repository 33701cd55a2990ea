package pybridge

import (
	"math"
	"unsafe"
)

// Operand kinds (see the package documentation).
const (
	kindF64   = 0
	kindF32   = 1
	kindArrow = 2
)

// matrix is a zero-copy view of one n×d row-major operand: exactly one of
// f64 and f32 is meant, as is32 says (an empty slice may be nil either way).
type matrix struct {
	f64  []float64
	f32  []float32
	is32 bool
	n, d int
	// release releases an imported Arrow array (running the producer's
	// release callback); nil for raw buffers.
	release func()
}

// close releases what m holds. It is safe to call more than once.
func (m *matrix) close() {
	if m.release != nil {
		m.release()
		m.release = nil
	}
}

// view returns the matrix operand (kind, addr, aux, n, d). what names the
// operand in error messages. The caller must call close on the result, also
// when the operation that follows fails; on error nothing is held.
func view(what string, kind int, addr, aux uintptr, n, d int) (matrix, error) {
	switch kind {
	case kindF64, kindF32:
		return viewBuffer(what, kind, addr, n, d)
	case kindArrow:
		return viewArrow(what, addr, aux)
	}
	return matrix{}, paramErrorf("%s: unknown operand kind %d", what, kind)
}

// viewBuffer views n·d values of the given kind at addr, the caller's
// memory. It checks what it can: sizes, a nil address and alignment.
func viewBuffer(what string, kind int, addr uintptr, n, d int) (matrix, error) {
	size := 8
	if kind == kindF32 {
		size = 4
	}
	if n < 0 || d < 0 {
		return matrix{}, shapeErrorf("%s: negative shape (%d, %d)", what, n, d)
	}
	if d != 0 && n > math.MaxInt/size/d {
		return matrix{}, shapeErrorf("%s: shape (%d, %d) is too large", what, n, d)
	}
	if n*d > 0 && addr == 0 {
		return matrix{}, paramErrorf("%s: null data address for a (%d, %d) buffer", what, n, d)
	}
	if addr%uintptr(size) != 0 {
		return matrix{}, paramErrorf("%s: data address %#x is not aligned to %d bytes", what, addr, size)
	}
	m := matrix{n: n, d: d, is32: kind == kindF32}
	if n*d == 0 {
		return m, nil
	}
	p := unsafe.Add(nil, addr)
	if m.is32 {
		m.f32 = unsafe.Slice((*float32)(p), n*d)
	} else {
		m.f64 = unsafe.Slice((*float64)(p), n*d)
	}
	return m, nil
}

// viewVector views a 1-D operand of b values (a matrix of b rows, 1 column).
func viewVector(what string, kind int, addr uintptr, b int) (matrix, error) {
	if kind != kindF64 && kind != kindF32 {
		return matrix{}, paramErrorf("%s: a vector must be a float32 or float64 buffer (kind %d)", what, kind)
	}
	return viewBuffer(what, kind, addr, b, 1)
}

// outBuf returns the caller's float64 result buffer of length k at addr.
func outBuf(addr uintptr, k int) []float64 {
	if addr == 0 || addr%8 != 0 {
		panic("gdiv: result buffer address is null or misaligned")
	}
	return unsafe.Slice((*float64)(unsafe.Add(nil, addr)), k)
}

// b2f converts a flag to a float64 result entry.
func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
