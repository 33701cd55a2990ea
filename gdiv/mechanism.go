package gdiv

import (
	"fmt"
	"math"
	"math/bits"
	"math/rand/v2"

	"gonum.org/v1/gonum/stat"
)

// Diversity-inducing mechanisms (DIMs), Section 4.4 of the paper.
//
// A DIM replaces each per-example gradient g_i by a random surrogate
// g_i^DIM, drawn independently across examples (and steps). Its diversity
// is the ratio of expectations of eq. (6),
//
//	Δ^DIM = Σ_i E‖g_i^DIM‖² / E‖Σ_i g_i^DIM‖²,   B^DIM = n·Δ^DIM,
//
// not the expectation of a ratio. Every mechanism here is linear in mean,
// E[g^DIM] = a·g for a scalar a (MeanScale), so, the draws being independent
// across rows,
//
//	E‖Σ_i g_i^DIM‖² = Σ_i E‖g_i^DIM − a g_i‖² + a²‖Σ_i g_i‖²
//	                = Σ_i E‖g_i^DIM‖² + a²(‖Σ_i g_i‖² − Σ_i ‖g_i‖²),
//
// and the closed form needs only E‖g^DIM‖² of one row (SecondMoment) and a.
// Expected computes it in the first form, as a sum of non-negative
// variances plus a²‖Σ g_i‖², which has no cancellation. It reproduces
// eqs. (22)–(24) of Appendix D. Theorem 9: where B_S ≤ n (non-negative
// cross terms, Δ ≤ 1) a DIM can only raise the diversity; where B_S > n
// (Δ > 1) it pulls Δ toward 1 but keeps it above 1.
//
// Apply draws the mechanism in place, for training; MonteCarlo estimates
// Δ^DIM from repeated draws, as an independent check of Expected.

// Mechanism is a diversity-inducing mechanism: a random map g ↦ g^DIM
// applied independently to each per-example gradient.
type Mechanism interface {
	// Name is the mechanism's name: "dropout", "langevin" or "quantize".
	Name() string
	// Validate returns an error wrapping ErrParam when a parameter is out
	// of range, naming the parameter and its value.
	Validate() error
	// Apply replaces each of the n rows of the row-major n×d buffer grads,
	// in place, by an independent draw of the mechanism, using rng. It
	// returns Validate's error and modifies nothing then. It panics if
	// len(grads) != n·d, n or d is negative, or rng is nil. Values are
	// not checked: non-finite inputs give non-finite (or zero) outputs.
	Apply(grads []float64, n, d int, rng *rand.Rand) error
	// Apply32 is Apply for float32 buffers; the arithmetic is done in
	// float64 and the same draws are taken from rng as by Apply, so both
	// paths agree up to float32 rounding for the same seed.
	Apply32(grads []float32, n, d int, rng *rand.Rand) error
	// SecondMoment returns E‖g^DIM‖² for one gradient row g. The
	// mechanism must be valid; otherwise the result is meaningless.
	SecondMoment(row []float64) float64
	// MeanScale returns a with E[g^DIM] = a·g.
	MeanScale() float64
}

// momenter is implemented by the mechanisms of this package: it returns
// SecondMoment(row) and the variance E‖g^DIM − a·g‖² together, the latter
// computed directly (no cancellation). Expected falls back to
// max(0, SecondMoment − a²‖g‖²) for other Mechanism implementations.
type momenter interface {
	moments(row []float64) (second, variance float64)
}

// checkApply holds the panics common to all Apply methods.
func checkApply(length, n, d int, rng *rand.Rand) {
	checkShape(length, n, d, "grads")
	if rng == nil {
		panic("gdiv: nil *rand.Rand")
	}
}

// Dropout is gradient dropout (Section 4.4): g^drop = D·g with D diagonal,
// its entries independent Bernoulli, 0 with probability P. Each coordinate
// of each row is kept with probability 1 − P.
//
// Unscaled (the default, the paper's D_i): kept coordinates are left as
// they are, E[D g] = (1−p)·g and E‖D g‖² = (1−p)‖g‖², which gives eq. (22):
//
//	B^drop = n Σ(1−p)‖g_i‖² / (Σ(1−p)‖g_i‖² + (1−p)² Σ_{i≠k} ⟨g_i, g_k⟩).
//
// With Rescale, kept coordinates are divided by 1 − P (inverted dropout):
// E[g^drop] = g and E‖g^drop‖² = ‖g‖²/(1−p). P = 0 is the identity (no
// random numbers are drawn).
//
// Apply draws the Bernoulli bits 64 at a time from the binary expansion of
// p (each uniform 64-bit word is combined by OR for a 1 bit of p and by AND
// for a 0 bit, from the least significant set bit up), so p is applied
// with resolution 2^-64, exactly for p ≥ 2^-11, and costs at most one
// rng.Uint64 per coordinate (one per 64 coordinates for p = 1/2).
type Dropout struct {
	P       float64 // dropout probability, 0 ≤ P < 1
	Rescale bool    // divide kept coordinates by 1 − P (unbiased)
}

// Name returns "dropout".
func (Dropout) Name() string { return "dropout" }

// Validate returns an ErrParam error unless 0 ≤ P < 1.
func (m Dropout) Validate() error {
	if !(m.P >= 0 && m.P < 1) {
		return paramErr("dropout p = %v, want 0 ≤ p < 1", m.P)
	}
	return nil
}

// MeanScale returns 1 − P unscaled, 1 with Rescale.
func (m Dropout) MeanScale() float64 {
	if m.Rescale {
		return 1
	}
	return 1 - m.P
}

// SecondMoment returns E‖D g‖² = (1−p)‖g‖², or ‖g‖²/(1−p) with Rescale.
func (m Dropout) SecondMoment(row []float64) float64 {
	s, _ := m.moments(row)
	return s
}

// moments: the variance of coordinate l is p(1−p)g_l² unscaled and
// p/(1−p)·g_l² rescaled.
func (m Dropout) moments(row []float64) (second, variance float64) {
	sq := sqNorm(row)
	q := 1 - m.P
	if m.Rescale {
		return sq / q, sq * (m.P / q)
	}
	return q * sq, m.P * q * sq
}

// Apply applies dropout in place; see Mechanism.
func (m Dropout) Apply(grads []float64, n, d int, rng *rand.Rand) error {
	checkApply(len(grads), n, d, rng)
	if err := m.Validate(); err != nil {
		return err
	}
	t, lo, scale, ok := m.plan()
	if ok {
		dropout64(grads, t, lo, scale, rng)
	}
	return nil
}

// Apply32 applies dropout in place to float32 gradients; see Mechanism.
func (m Dropout) Apply32(grads []float32, n, d int, rng *rand.Rand) error {
	checkApply(len(grads), n, d, rng)
	if err := m.Validate(); err != nil {
		return err
	}
	t, lo, scale, ok := m.plan()
	if ok {
		dropout32(grads, t, lo, scale, rng)
	}
	return nil
}

// plan returns the 64-bit threshold t = round(p·2^64), the index of its
// lowest set bit, and the scale of kept coordinates; ok is false when
// nothing is ever dropped (p = 0, or p < 2^-65).
func (m Dropout) plan() (t uint64, lo int, scale float64, ok bool) {
	if m.P == 0 {
		return 0, 0, 1, false
	}
	// p < 1 is at most 1 − 2^-53, so p·2^64 ≤ 2^64 − 2^11: no overflow.
	t = uint64(math.Round(m.P * 0x1p64))
	if t == 0 {
		return 0, 0, 1, false
	}
	scale = 1
	if m.Rescale {
		scale = 1 / (1 - m.P)
	}
	return t, bits.TrailingZeros64(t), scale, true
}

// dropBits returns 64 independent bits, each 1 with probability t/2^64:
// after combining the words for bits lo..k of t, each bit of m is 1 with
// probability 0.t_k…t_lo (binary); OR with a fair word maps q to 1/2 + q/2,
// AND maps q to q/2.
func dropBits(t uint64, lo int, rng *rand.Rand) uint64 {
	m := rng.Uint64()
	for k := lo + 1; k < 64; k++ {
		r := rng.Uint64()
		if t>>uint(k)&1 != 0 {
			m |= r
		} else {
			m &= r
		}
	}
	return m
}

// dropout64 zeroes the dropped coordinates and scales the kept ones,
// branch-free: a dropped coordinate becomes +0 whatever its value.
func dropout64(x []float64, t uint64, lo int, scale float64, rng *rand.Rand) {
	for off := 0; off < len(x); off += 64 {
		keep := ^dropBits(t, lo, rng)
		blk := x[off:min(off+64, len(x))]
		for j, v := range blk {
			mask := -(keep >> uint(j) & 1)
			blk[j] = math.Float64frombits(math.Float64bits(v*scale) & mask)
		}
	}
}

// dropout32 is dropout64 for float32, scaling in float64.
func dropout32(x []float32, t uint64, lo int, scale float64, rng *rand.Rand) {
	for off := 0; off < len(x); off += 64 {
		keep := ^dropBits(t, lo, rng)
		blk := x[off:min(off+64, len(x))]
		for j, v := range blk {
			mask := -uint32(keep >> uint(j) & 1)
			y := float32(float64(v) * scale)
			blk[j] = math.Float32frombits(math.Float32bits(y) & mask)
		}
	}
}

// Langevin is stochastic gradient Langevin dynamics (Section 4.4):
// g^sgld = g + ξ, ξ ~ N(0, Std²·I) drawn independently per example.
//
// Std is a standard deviation: the paper writes N(0, σI) but its eq. (23)
// uses the variance dσ² per example, so the noise variance is Std².
// E[g^sgld] = g, E‖g^sgld‖² = ‖g‖² + d·Std², and eq. (23) follows:
//
//	B^sgld = (n Σ‖g_i‖² + n² d σ²) / (‖Σ g_i‖² + n d σ²).
//
// Summed over a batch of B the noise is one Gaussian of variance B·Std²,
// so a trainer that only needs the sum can add it once to the sum. Std = 0
// is the identity (no random numbers are drawn).
type Langevin struct {
	Std float64 // noise standard deviation σ ≥ 0
}

// Name returns "langevin".
func (Langevin) Name() string { return "langevin" }

// Validate returns an ErrParam error unless Std is finite and ≥ 0.
func (m Langevin) Validate() error {
	if !(m.Std >= 0 && m.Std <= math.MaxFloat64) {
		return paramErr("langevin std = %v, want finite std ≥ 0", m.Std)
	}
	return nil
}

// MeanScale returns 1: the noise has mean zero.
func (Langevin) MeanScale() float64 { return 1 }

// SecondMoment returns ‖g‖² + d·Std² with d = len(row).
func (m Langevin) SecondMoment(row []float64) float64 {
	s, _ := m.moments(row)
	return s
}

func (m Langevin) moments(row []float64) (second, variance float64) {
	v := float64(len(row)) * m.Std * m.Std
	return sqNorm(row) + v, v
}

// Apply adds the noise in place; see Mechanism.
func (m Langevin) Apply(grads []float64, n, d int, rng *rand.Rand) error {
	checkApply(len(grads), n, d, rng)
	if err := m.Validate(); err != nil {
		return err
	}
	langevinApply(grads, m.Std, rng)
	return nil
}

// Apply32 adds the noise in place to float32 gradients; see Mechanism.
func (m Langevin) Apply32(grads []float32, n, d int, rng *rand.Rand) error {
	checkApply(len(grads), n, d, rng)
	if err := m.Validate(); err != nil {
		return err
	}
	langevinApply(grads, m.Std, rng)
	return nil
}

func langevinApply[T float32 | float64](x []T, std float64, rng *rand.Rand) {
	if std == 0 {
		return
	}
	for i, v := range x {
		x[i] = T(float64(v) + std*rng.NormFloat64())
	}
}

// Quantize is QSGD stochastic quantization with s = Levels levels
// (Section 4.4; Alistarh et al.); Levels = 0 means 1, the paper's Q(v).
// For a row v ≠ 0, with r_l = s|v_l|/‖v‖₂ and k_l = ⌊r_l⌋,
//
//	Q_s(v)_l = ‖v‖₂ · sign(v_l) · ξ_l / s,   ξ_l = k_l + 1 w.p. r_l − k_l, else k_l,
//
// independently over l; a zero row stays zero. E[Q_s(v)] = v (unbiased),
// and
//
//	E‖Q_s(v)‖² = ‖v‖²/s² Σ_l (k_l² + (2k_l+1)(r_l − k_l))
//	           = ‖v‖² + ‖v‖²/s² Σ_l f_l(1 − f_l),   f_l = r_l − k_l,
//
// which for s = 1 (k_l = 0 unless |v_l| = ‖v‖) is ‖v‖₂‖v‖₁, the
// numerator of eq. (24). Apply uses one rng.Uint64 per coordinate with
// f_l > 0 (none for zero coordinates) and computes ‖v‖₂ without
// spurious overflow or underflow (rows whose norm itself exceeds the
// float64 range give non-finite output).
type Quantize struct {
	Levels int // number of levels s ≥ 0; 0 means 1
}

// Name returns "quantize".
func (Quantize) Name() string { return "quantize" }

// Validate returns an ErrParam error if Levels < 0.
func (m Quantize) Validate() error {
	if m.Levels < 0 {
		return paramErr("quantize levels = %d, want levels ≥ 0 (0 means 1)", m.Levels)
	}
	return nil
}

// levels returns s as a float64, with 0 meaning 1.
func (m Quantize) levels() float64 {
	if m.Levels == 0 {
		return 1
	}
	return float64(m.Levels)
}

// MeanScale returns 1: quantization is unbiased.
func (Quantize) MeanScale() float64 { return 1 }

// SecondMoment returns E‖Q_s(g)‖² = ‖g‖² + ‖g‖²/s² Σ_l f_l(1 − f_l).
func (m Quantize) SecondMoment(row []float64) float64 {
	s, _ := m.moments(row)
	return s
}

func (m Quantize) moments(row []float64) (second, variance float64) {
	norm := l2norm(row)
	if norm == 0 {
		return 0, 0
	}
	s := m.levels()
	inv, slow := quantInv(norm, s)
	var acc float64
	for _, v := range row {
		r := quantRatio(math.Abs(v), norm, s, inv, slow)
		f := r - math.Floor(r)
		acc += f * (1 - f)
	}
	step := norm / s
	variance = step * step * acc
	return norm*norm + variance, variance
}

// quantInv returns s/‖v‖, or slow = true when it overflows (‖v‖
// subnormal) and r must be formed as |v_l|/‖v‖·s instead.
func quantInv(norm, s float64) (inv float64, slow bool) {
	inv = s / norm
	return inv, math.IsInf(inv, 1)
}

// quantRatio returns r = s|v_l|/‖v‖ clamped to s (rounding could push it
// above by an ulp).
func quantRatio(a, norm, s, inv float64, slow bool) float64 {
	var r float64
	if slow {
		r = a / norm * s
	} else {
		r = a * inv
	}
	return min(r, s)
}

// Apply quantizes each row in place; see Mechanism.
func (m Quantize) Apply(grads []float64, n, d int, rng *rand.Rand) error {
	checkApply(len(grads), n, d, rng)
	if err := m.Validate(); err != nil {
		return err
	}
	quantizeApply(grads, n, d, m.levels(), rng)
	return nil
}

// Apply32 quantizes each float32 row in place; see Mechanism.
func (m Quantize) Apply32(grads []float32, n, d int, rng *rand.Rand) error {
	checkApply(len(grads), n, d, rng)
	if err := m.Validate(); err != nil {
		return err
	}
	quantizeApply(grads, n, d, m.levels(), rng)
	return nil
}

func quantizeApply[T float32 | float64](x []T, n, d int, s float64, rng *rand.Rand) {
	for i := range n {
		row := x[i*d : (i+1)*d]
		norm := l2norm(row)
		if norm == 0 {
			clear(row) // ±0 entries become +0
			continue
		}
		inv, slow := quantInv(norm, s)
		step := norm / s
		for j, v := range row {
			a := math.Abs(float64(v))
			r := quantRatio(a, norm, s, inv, slow)
			k := math.Floor(r)
			if f := r - k; f > 0 {
				k += roundUp(f, rng)
			}
			q := k * step
			if v < 0 {
				q = -q
			}
			row[j] = T(q)
		}
	}
}

// roundUp returns 1 with probability f ∈ (0, 1) and 0 otherwise, without
// a data-dependent branch: u uniform on [0, 2^53) is compared with
// ⌈f·2^53⌉ by the sign of their difference, so P(1) = ⌈f·2^53⌉/2^53, the
// probability of rng.Float64() < f, with one rng.Uint64 like rng.Float64.
func roundUp(f float64, rng *rand.Rand) float64 {
	u := rng.Uint64() >> 11
	t := uint64(math.Ceil(f * 0x1p53))
	return float64((u - t) >> 63)
}

// l2norm returns ‖v‖₂ in float64 without spurious overflow or underflow:
// a plain sum of squares, and a rescaled second pass only when that sum
// leaves the safe range (never for float32 input). NaN input gives NaN.
func l2norm[T float32 | float64](v []T) float64 {
	var s0, s1 float64
	j := 0
	for ; j+2 <= len(v); j += 2 {
		a, b := float64(v[j]), float64(v[j+1])
		s0 += a * a
		s1 += b * b
	}
	if j < len(v) {
		a := float64(v[j])
		s0 += a * a
	}
	ss := s0 + s1
	if ss > 0x1p-900 && ss < 0x1p900 {
		return math.Sqrt(ss)
	}
	if math.IsNaN(ss) {
		return ss
	}
	var mx float64
	for _, x := range v {
		mx = max(mx, math.Abs(float64(x)))
	}
	if mx == 0 || math.IsInf(mx, 1) {
		return mx
	}
	ss = 0
	for _, x := range v {
		y := float64(x) / mx
		ss += y * y
	}
	return mx * math.Sqrt(ss)
}

// Expectation is the closed-form expected diversity of a mechanism
// (eq. 6) next to the diversity of the unmodified gradients.
type Expectation struct {
	N   int // number of examples n
	Dim int // dimension d

	// SumSqNorms is Σ_i E‖g_i^DIM‖² and SqNormOfSum is E‖Σ_i g_i^DIM‖².
	SumSqNorms  float64
	SqNormOfSum float64

	// Diversity is Δ^DIM = SumSqNorms / SqNormOfSum (eq. 6), +Inf when the
	// denominator is 0; BatchBound is B^DIM = n·Δ^DIM.
	Diversity  float64
	BatchBound float64

	// BaseDiversity and BaseBatchBound are Δ_S and B_S of the gradients
	// themselves (ComputeStats).
	BaseDiversity  float64
	BaseBatchBound float64
}

// Expected returns the expected diversity Δ^DIM of eq. (6) of mechanism m
// applied to the n×d row-major gradients grads, in closed form:
//
//	Σ_i E‖g_i^DIM‖² = Σ_i m.SecondMoment(g_i),
//	E‖Σ_i g_i^DIM‖²  = Σ_i (E‖g_i^DIM‖² − a²‖g_i‖²) + a²‖Σ_i g_i‖²,  a = m.MeanScale(),
//
// which is eq. (22) for Dropout, eq. (23) for Langevin and eq. (24) for
// Quantize (s = 1; general s with the exact QSGD second moment).
//
// It returns m.Validate's error (ErrParam), and ErrEmpty, ErrZeroDim,
// ErrNonFinite, ErrOverflow or ErrAllZero for degenerate data, as
// ComputeStats does. It panics if m is nil, n or d is negative, or
// len(grads) != n·d.
func Expected(m Mechanism, grads []float64, n, d int) (Expectation, error) {
	return expected(m, grads, n, d)
}

// Expected32 is Expected for float32 gradients (computed in float64).
func Expected32(m Mechanism, grads []float32, n, d int) (Expectation, error) {
	return expected(m, grads, n, d)
}

func expected[T float32 | float64](m Mechanism, grads []T, n, d int) (Expectation, error) {
	if m == nil {
		panic("gdiv: nil Mechanism")
	}
	checkShape(len(grads), n, d, "grads")
	if err := m.Validate(); err != nil {
		return Expectation{}, err
	}
	base, err := computeStats(grads, n, d)
	if err != nil {
		return Expectation{}, err
	}
	a := m.MeanScale()
	mo, fast := m.(momenter)
	var buf []float64
	if _, ok := any(grads).([]float64); !ok {
		buf = make([]float64, d)
	}
	var num, variance float64
	for i := range n {
		row := asFloat64(buf, grads[i*d:(i+1)*d])
		if fast {
			s, v := mo.moments(row)
			num += s
			variance += v
			continue
		}
		s := m.SecondMoment(row)
		num += s
		variance += max(0, s-a*a*sqNorm(row))
	}
	den := variance + a*a*base.SqNormOfSum
	st, err := StatsFromSums(n, d, num, den)
	if err != nil {
		return Expectation{}, fmt.Errorf("%w (expected diversity of %s)", err, m.Name())
	}
	return Expectation{
		N:              n,
		Dim:            d,
		SumSqNorms:     num,
		SqNormOfSum:    den,
		Diversity:      st.Diversity,
		BatchBound:     st.BatchBound,
		BaseDiversity:  base.Diversity,
		BaseBatchBound: base.BatchBound,
	}, nil
}

// asFloat64 returns row itself when it is a []float64, else its float64
// conversion in buf.
func asFloat64[T float32 | float64](buf []float64, row []T) []float64 {
	if r, ok := any(row).([]float64); ok {
		return r
	}
	for j, v := range row {
		buf[j] = float64(v)
	}
	return buf
}

// MonteCarloResult is a Monte-Carlo estimate of the expected diversity of
// eq. (6).
type MonteCarloResult struct {
	Samples int // number of independent draws

	// SumSqNorms and SqNormOfSum are the sample means of Σ_i‖g_i^DIM‖² and
	// ‖Σ_i g_i^DIM‖² over the draws.
	SumSqNorms  float64
	SqNormOfSum float64

	// Diversity is the ratio of the means SumSqNorms/SqNormOfSum (the
	// estimator of eq. 6's ratio of expectations), StdErr its delta-method
	// standard error, BatchBound = n·Diversity (standard error n·StdErr).
	Diversity  float64
	StdErr     float64
	BatchBound float64
}

// MonteCarlo estimates the expected diversity Δ^DIM of eq. (6) by applying
// m to `samples` fresh copies of grads (grads itself is not modified).
// With num_k = Σ_i‖g_i^DIM‖² and den_k = ‖Σ_i g_i^DIM‖² in draw k,
//
//	Δ̂ = mean(num)/mean(den),
//	StdErr = sqrt(Var_k(num_k − Δ̂·den_k)/samples) / mean(den)
//
// (delta method, unbiased sample variance). When every den_k is 0 the
// estimate is +Inf with StdErr 0. The result is a deterministic function
// of rng's state.
//
// It returns an ErrParam error if samples < 2 or m is invalid, the data
// errors of ComputeStats, and ErrOverflow if a draw overflows. It panics
// if m or rng is nil, n or d is negative, or len(grads) != n·d.
func MonteCarlo(m Mechanism, grads []float64, n, d, samples int, rng *rand.Rand) (MonteCarloResult, error) {
	return monteCarlo(m, grads, n, d, samples, rng)
}

// MonteCarlo32 is MonteCarlo for float32 gradients, drawing with
// m.Apply32.
func MonteCarlo32(m Mechanism, grads []float32, n, d, samples int, rng *rand.Rand) (MonteCarloResult, error) {
	return monteCarlo(m, grads, n, d, samples, rng)
}

func monteCarlo[T float32 | float64](m Mechanism, grads []T, n, d, samples int, rng *rand.Rand) (MonteCarloResult, error) {
	if m == nil {
		panic("gdiv: nil Mechanism")
	}
	checkApply(len(grads), n, d, rng)
	if samples < 2 {
		return MonteCarloResult{}, paramErr("monte carlo samples = %d, want samples ≥ 2", samples)
	}
	if err := m.Validate(); err != nil {
		return MonteCarloResult{}, err
	}
	if _, err := computeStats(grads, n, d); err != nil {
		return MonteCarloResult{}, err
	}
	work := make([]T, len(grads))
	sum := make([]float64, d)
	num := make([]float64, samples)
	den := make([]float64, samples)
	for k := range samples {
		copy(work, grads)
		var err error
		switch w := any(work).(type) {
		case []float64:
			err = m.Apply(w, n, d, rng)
		case []float32:
			err = m.Apply32(w, n, d, rng)
		}
		if err != nil {
			return MonteCarloResult{}, err
		}
		clear(sum)
		num[k] = accumulateRows(sum, work, n, d)
		den[k] = sqNorm(sum)
		if math.IsInf(num[k], 0) || math.IsNaN(num[k]) || math.IsInf(den[k], 0) || math.IsNaN(den[k]) {
			return MonteCarloResult{}, fmt.Errorf("%w: %s draw %d: sum_sq_norms=%v, sq_norm_of_sum=%v",
				ErrOverflow, m.Name(), k, num[k], den[k])
		}
	}
	mNum, mDen := stat.Mean(num, nil), stat.Mean(den, nil)
	st, err := StatsFromSums(n, d, mNum, mDen)
	if err != nil {
		return MonteCarloResult{}, fmt.Errorf("%w (Monte Carlo diversity of %s)", err, m.Name())
	}
	res := MonteCarloResult{
		Samples:     samples,
		SumSqNorms:  mNum,
		SqNormOfSum: mDen,
		Diversity:   st.Diversity,
		BatchBound:  st.BatchBound,
	}
	if mDen > 0 {
		z := num // reuse: z_k = num_k − Δ̂·den_k
		for k := range z {
			z[k] -= st.Diversity * den[k]
		}
		res.StdErr = math.Sqrt(stat.Variance(z, nil)/float64(samples)) / mDen
	}
	return res, nil
}

// SumNoiseStd returns the standard deviation of the one Gaussian that has
// the distribution of a batch's summed Langevin noise. The b per-example
// draws ξ_i ~ N(0, Std²·I) are independent, so
//
//	Σ_{i≤b} ξ_i ~ N(0, b·Std²·I):         Std·√b    for the sum Σ(g_i + ξ_i),
//	(1/b) Σ_{i≤b} ξ_i ~ N(0, Std²/b·I):   Std/√b    for the mean (mean = true),
//
// and a trainer that needs only the batch gradient (no per-example
// gradients) adds one draw of this standard deviation per coordinate to it,
// instead of b draws. It panics if b < 1.
func (m Langevin) SumNoiseStd(b int, mean bool) float64 {
	if b < 1 {
		panic(fmt.Sprintf("gdiv: Langevin.SumNoiseStd: batch %d, want ≥ 1", b))
	}
	if mean {
		return m.Std / math.Sqrt(float64(b))
	}
	return m.Std * math.Sqrt(float64(b))
}

// ExpectedSumSqNorms returns
//
//	E Σ_{i≤b} ‖g_i + ξ_i‖² = sumSqNorms + b·d·Std²,
//
// given sumSqNorms = Σ‖g_i‖² of b clean d-dimensional gradients: the
// batch's Σ‖g_i^sgld‖² with the noise replaced by its expectation (the
// cross terms 2⟨g_i, ξ_i⟩ have mean zero; it is the sum of SecondMoment
// over the rows). A trainer that adds the noise once to the batch gradient
// (SumNoiseStd) never forms the surrogates g_i + ξ_i; with this sum and the
// squared norm of the noisy batch gradient, whose expectation is
// ‖Σ g_i‖² + b·d·Std², EstimateBatch's M̂² is shifted by exactly d·Std²
// (E‖g^sgld‖² of eq. 23) and Ĝ stays unbiased for ‖∇F‖², as with
// per-example noise. It panics if b < 1 or d < 0.
func (m Langevin) ExpectedSumSqNorms(sumSqNorms float64, b, d int) float64 {
	if b < 1 || d < 0 {
		panic(fmt.Sprintf("gdiv: Langevin.ExpectedSumSqNorms: batch %d, dimension %d, want b ≥ 1, d ≥ 0", b, d))
	}
	return sumSqNorms + float64(b)*float64(d)*m.Std*m.Std
}
