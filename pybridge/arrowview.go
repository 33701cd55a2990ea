package pybridge

import "unsafe"

// ArrowView imports the Arrow operand (array and schema struct addresses),
// writes out[0:3] = n, d, kind of its values (0 float64, 1 float32), releases
// it and returns the address of its first value (0 when it has none). The
// Python package uses it to size a copy (ArrowCopy) and its tests to prove
// that Arrow data is viewed in place. The address is only information: it
// is not valid for longer than the producer keeps the data alive.
func ArrowView(out uintptr, arr, sch uintptr) (_ uintptr, err error) {
	defer guard(&err)
	m, err := view("array", kindArrow, arr, sch, 0, 0)
	if err != nil {
		return 0, err
	}
	defer m.close()
	o := outBuf(out, 3)
	o[0], o[1] = float64(m.n), float64(m.d)
	var p uintptr
	if m.is32 {
		o[2] = kindF32
		if len(m.f32) > 0 {
			p = uintptr(unsafe.Pointer(&m.f32[0]))
		}
	} else {
		o[2] = kindF64
		if len(m.f64) > 0 {
			p = uintptr(unsafe.Pointer(&m.f64[0]))
		}
	}
	return p, nil
}

// ArrowCopy imports the Arrow operand, copies its n·d values into the
// caller's buffer dst of dstLen values of the same dtype (kind dstKind),
// releases the operand and returns n·d. It is the one documented copy for
// Arrow input (Mechanism.apply returns a new array).
func ArrowCopy(dst uintptr, dstKind int, dstLen int, arr, sch uintptr) (_ int, err error) {
	defer guard(&err)
	m, err := view("array", kindArrow, arr, sch, 0, 0)
	if err != nil {
		return 0, err
	}
	defer m.close()
	if dstLen != m.n*m.d || (dstKind == kindF32) != m.is32 {
		return 0, shapeErrorf("array: copy target holds %d values of kind %d, source has %d of %s", dstLen, dstKind, m.n*m.d, dtypeName(m.is32))
	}
	t, err := viewBuffer("dst", dstKind, dst, m.n, m.d)
	if err != nil {
		return 0, err
	}
	copy(t.f64, m.f64)
	copy(t.f32, m.f32)
	return m.n * m.d, nil
}
