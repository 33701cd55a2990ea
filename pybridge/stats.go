package pybridge

import "github.com/gdiv/gdiv/gdiv"

// statsLen is the length of the result buffer of Stats, StatsDifferential
// and StatsFromSums.
const statsLen = 9

// writeStats writes s to out[0:9] in the order n, dim, sum_sq_norms,
// sq_norm_of_sum, m2, g, diversity, batch_bound, noise_scale.
func writeStats(addr uintptr, s gdiv.Stats) {
	o := outBuf(addr, statsLen)
	o[0], o[1] = float64(s.N), float64(s.Dim)
	o[2], o[3] = s.SumSqNorms, s.SqNormOfSum
	o[4], o[5] = s.M2, s.G
	o[6], o[7], o[8] = s.Diversity, s.BatchBound, s.NoiseScale
}

// Stats computes gdiv.ComputeStats (or ComputeStats32) of the matrix
// operand (kind, addr, aux, n, d) and writes it to out[0:9] (see writeStats).
// It returns 0.
func Stats(out uintptr, kind int, addr, aux uintptr, n, d int) (_ int, err error) {
	defer guard(&err)
	m, err := view("grads", kind, addr, aux, n, d)
	if err != nil {
		return 0, err
	}
	defer m.close()
	var s gdiv.Stats
	if m.is32 {
		s, err = gdiv.ComputeStats32(m.f32, m.n, m.d)
	} else {
		s, err = gdiv.ComputeStats(m.f64, m.n, m.d)
	}
	if err != nil {
		return 0, err
	}
	writeStats(out, s)
	return 0, nil
}

// StatsDifferential computes gdiv.DifferentialStats of the operands grads_w
// (kind1, ...) and grads_w2 (kind2, ...), which must have the same shape
// and dtype, and writes it to out[0:9]. It returns 0.
func StatsDifferential(out uintptr, kind1 int, addr1, aux1 uintptr, n1, d1 int, kind2 int, addr2, aux2 uintptr, n2, d2 int) (_ int, err error) {
	defer guard(&err)
	a, err := view("grads_w", kind1, addr1, aux1, n1, d1)
	if err != nil {
		return 0, err
	}
	defer a.close()
	b, err := view("grads_w2", kind2, addr2, aux2, n2, d2)
	if err != nil {
		return 0, err
	}
	defer b.close()
	if a.n != b.n || a.d != b.d {
		return 0, shapeErrorf("grads_w has shape (%d, %d) but grads_w2 has shape (%d, %d)", a.n, a.d, b.n, b.d)
	}
	if a.is32 != b.is32 {
		return 0, typeErrorf("grads_w is %s but grads_w2 is %s; convert one so both have the same dtype", dtypeName(a.is32), dtypeName(b.is32))
	}
	var s gdiv.Stats
	if a.is32 {
		s, err = gdiv.DifferentialStats32(a.f32, b.f32, a.n, a.d)
	} else {
		s, err = gdiv.DifferentialStats(a.f64, b.f64, a.n, a.d)
	}
	if err != nil {
		return 0, err
	}
	writeStats(out, s)
	return 0, nil
}

// StatsFromSums computes gdiv.StatsFromSums and writes it to out[0:9].
// It returns 0.
func StatsFromSums(out uintptr, n, dim int, sumSqNorms, sqNormOfSum float64) (_ int, err error) {
	defer guard(&err)
	if n < 0 || dim < 0 {
		return 0, paramErrorf("n = %d and dim = %d must not be negative", n, dim)
	}
	s, err := gdiv.StatsFromSums(n, dim, sumSqNorms, sqNormOfSum)
	if err != nil {
		return 0, err
	}
	writeStats(out, s)
	return 0, nil
}

func dtypeName(is32 bool) string {
	if is32 {
		return "float32"
	}
	return "float64"
}
