package pybridge

import "github.com/gdiv/gdiv/gdiv"

const (
	glmLen    = 5
	sparseLen = 4
)

// float64s returns the operand's values as float64: the view itself, or a
// widened copy of float32 values (gdiv's bounds take float64 only).
func float64s(m matrix) []float64 {
	if !m.is32 {
		return m.f64
	}
	x := make([]float64, len(m.f32))
	for i, v := range m.f32 {
		x[i] = float64(v)
	}
	return x
}

// BoundGLM computes gdiv.BoundGLM of the feature matrix operand and writes
// out[0:5] = n, dim, min_sq_norm, sigma_max_sq, batch_bound_lower. float32
// input is widened to a float64 copy first. It returns 0.
func BoundGLM(out uintptr, kind int, addr, aux uintptr, n, d int) (_ int, err error) {
	defer guard(&err)
	x, err := view("X", kind, addr, aux, n, d)
	if err != nil {
		return 0, err
	}
	defer x.close()
	b, err := gdiv.BoundGLM(float64s(x), x.n, x.d)
	if err != nil {
		return 0, err
	}
	o := outBuf(out, glmLen)
	o[0], o[1], o[2], o[3], o[4] = float64(b.N), float64(b.Dim), b.MinSqNorm, b.SigmaMaxSq, b.BatchBoundLower
	return 0, nil
}

// BoundSparse computes gdiv.BoundSparse of the gradient matrix operand and
// writes out[0:4] = n, dim, max_degree, batch_bound_lower. float32 input is
// widened to a float64 copy first. It returns 0.
func BoundSparse(out uintptr, kind int, addr, aux uintptr, n, d int) (_ int, err error) {
	defer guard(&err)
	g, err := view("grads", kind, addr, aux, n, d)
	if err != nil {
		return 0, err
	}
	defer g.close()
	if g.n >= 1<<31 {
		return 0, shapeErrorf("grads: %d rows; the sparse bound supports fewer than 2^31", g.n)
	}
	b, err := gdiv.BoundSparse(float64s(g), g.n, g.d)
	if err != nil {
		return 0, err
	}
	o := outBuf(out, sparseLen)
	o[0], o[1], o[2], o[3] = float64(b.N), float64(b.Dim), float64(b.MaxDegree), b.BatchBoundLower
	return 0, nil
}

// StabilityStep returns gdiv.StabilityStepConvex (stronglyConvex false) or
// gdiv.StabilityStepStronglyConvex with λ = lambda.
func StabilityStep(beta, lambda float64, n, batch int, diffBatchBound float64, stronglyConvex bool) (_ float64, err error) {
	defer guard(&err)
	if stronglyConvex {
		return gdiv.StabilityStepStronglyConvex(beta, lambda, n, batch, diffBatchBound)
	}
	return gdiv.StabilityStepConvex(beta, n, batch, diffBatchBound)
}
