package gdiv

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"testing"

	"gonum.org/v1/gonum/floats/scalar"
)

// Named tolerances of the mechanism tests (prefixed: the package's test
// files share one namespace).
const (
	mechTolExact = 1e-12 // closed form vs. exact enumeration on small inputs
	mechTolSigma = 4.0   // Monte Carlo vs. closed form, in standard errors
	mechTolMean  = 5.0   // per-coordinate sample means, in standard errors (many comparisons)
	mechTolF32   = 1e-6  // float32 path vs. float64 path, relative
)

func mechNear(a, b, tol float64) bool {
	if math.IsInf(a, 0) || math.IsInf(b, 0) {
		return a == b
	}
	return scalar.EqualWithinAbsOrRel(a, b, tol, tol)
}

func mechRand(rng *rand.Rand, n, d int, mean float64) []float64 {
	x := make([]float64, n*d)
	for i := range x {
		x[i] = mean + rng.NormFloat64()
	}
	return x
}

func mechTo32(x []float64) []float32 {
	y := make([]float32, len(x))
	for i, v := range x {
		y[i] = float32(v)
	}
	return y
}

// mechSums returns Σ‖g_i‖² and ‖Σ g_i‖² of an n×d buffer by the obvious
// double loop (the test's own oracle).
func mechSums(g []float64, n, d int) (sumSq, sqSum float64) {
	for j := range d {
		var col float64
		for i := range n {
			v := g[i*d+j]
			sumSq += v * v
			col += v
		}
		sqSum += col * col
	}
	return sumSq, sqSum
}

// mechEnumerate computes E Σ‖g_i^DIM‖² and E‖Σ g_i^DIM‖² exactly for a
// mechanism whose coordinates take one of two values independently:
// outcome(k, b) returns the value of coordinate k under bit b ∈ {0,1} and
// its probability. All 2^(n·d) outcomes are enumerated.
func mechEnumerate(n, d int, outcome func(k, b int) (val, prob float64)) (num, den float64) {
	nd := n * d
	y := make([]float64, nd)
	for mask := 0; mask < 1<<nd; mask++ {
		w := 1.0
		for k := range nd {
			v, p := outcome(k, mask>>k&1)
			y[k] = v
			w *= p
		}
		if w == 0 {
			continue
		}
		a, b := mechSums(y, n, d)
		num += w * a
		den += w * b
	}
	return num, den
}

// Small exact cases: 2×2 with a positive and a negative inner product,
// 3×2 with negative and positive cross sums, zero coordinates and a row
// with a single nonzero (|v_l| = ‖v‖).
var mechSmallCases = []struct {
	name string
	n, d int
	g    []float64
}{
	{"2x2 positive", 2, 2, []float64{1, 2, 3, 0.5}},
	{"2x2 negative", 2, 2, []float64{1, 2, -1.5, -0.5}},
	{"3x2 negative", 3, 2, []float64{1, -2, 0.5, 3, -2, 1}},
	{"3x2 positive", 3, 2, []float64{1, 2, 2, 1, 0.5, 0.3}},
	{"3x2 zeros", 3, 2, []float64{0, 2, 1.5, 0, 0.25, -0.75}},
}

func checkEnumerated(t *testing.T, what string, m Mechanism, g []float64, n, d int, num, den float64) {
	t.Helper()
	e, err := Expected(m, g, n, d)
	if err != nil {
		t.Fatalf("%s: Expected: %v", what, err)
	}
	if !mechNear(e.SumSqNorms, num, mechTolExact) || !mechNear(e.SqNormOfSum, den, mechTolExact) {
		t.Errorf("%s: E sums = (%v, %v), enumeration (%v, %v)", what, e.SumSqNorms, e.SqNormOfSum, num, den)
	}
	if !mechNear(e.Diversity, num/den, mechTolExact) {
		t.Errorf("%s: Δ^DIM = %v, enumeration %v", what, e.Diversity, num/den)
	}
	if !mechNear(e.BatchBound, float64(n)*num/den, mechTolExact) {
		t.Errorf("%s: B^DIM = %v, enumeration %v", what, e.BatchBound, float64(n)*num/den)
	}
}

func TestExpectedDropoutByEnumeration(t *testing.T) {
	for _, c := range mechSmallCases {
		for _, p := range []float64{0, 0.1, 0.5, 0.8} {
			for _, rescale := range []bool{false, true} {
				m := Dropout{P: p, Rescale: rescale}
				scale := 1.0
				if rescale {
					scale = 1 / (1 - p)
				}
				num, den := mechEnumerate(c.n, c.d, func(k, b int) (float64, float64) {
					if b == 1 { // dropped
						return 0, p
					}
					return c.g[k] * scale, 1 - p
				})
				checkEnumerated(t, c.name+" "+mechDesc(m), m, c.g, c.n, c.d, num, den)
			}
		}
	}
}

func TestExpectedQuantizeByEnumeration(t *testing.T) {
	for _, c := range mechSmallCases {
		norms := make([]float64, c.n)
		for i := range c.n {
			var s float64
			for j := range c.d {
				s += c.g[i*c.d+j] * c.g[i*c.d+j]
			}
			norms[i] = math.Sqrt(s)
		}
		for _, levels := range []int{0, 1, 2, 3} {
			m := Quantize{Levels: levels}
			s := float64(max(levels, 1))
			num, den := mechEnumerate(c.n, c.d, func(k, b int) (float64, float64) {
				v, norm := c.g[k], norms[k/c.d]
				r := s * math.Abs(v) / norm
				lo := math.Floor(r)
				f := r - lo
				xi, p := lo, 1-f
				if b == 1 {
					xi, p = lo+1, f
				}
				return math.Copysign(norm*xi/s, v), p
			})
			checkEnumerated(t, c.name+" "+mechDesc(m), m, c.g, c.n, c.d, num, den)
		}
	}
}

// A Rademacher variable ±σ has the first three moments of N(0, σ²), and
// both sums are quadratic in the noise, so enumerating signs gives the
// Gaussian expectation exactly (two-point Gauss–Hermite quadrature).
func TestExpectedLangevinByEnumeration(t *testing.T) {
	for _, c := range mechSmallCases {
		for _, std := range []float64{0, 0.3, 2} {
			m := Langevin{Std: std}
			num, den := mechEnumerate(c.n, c.d, func(k, b int) (float64, float64) {
				return c.g[k] + float64(2*b-1)*std, 0.5
			})
			checkEnumerated(t, c.name+" "+mechDesc(m), m, c.g, c.n, c.d, num, den)
		}
	}
}

func mechDesc(m Mechanism) string { return fmt.Sprintf("%+v", m) }

// The paper's closed forms written out: eqs. (22), (23), (24).
func TestExpectedPaperEquations(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 1))
	for trial := range 20 {
		n, d := 2+rng.IntN(8), 1+rng.IntN(10)
		g := mechRand(rng, n, d, rng.NormFloat64())
		var sumSq, sumL2L1, cross float64
		for i := range n {
			row := g[i*d : (i+1)*d]
			var s2, s1 float64
			for _, v := range row {
				s2 += v * v
				s1 += math.Abs(v)
			}
			sumSq += s2
			sumL2L1 += math.Sqrt(s2) * s1
		}
		_, sqSum := mechSums(g, n, d)
		cross = sqSum - sumSq // Σ_{i≠k}⟨g_i, g_k⟩
		nf, df := float64(n), float64(d)

		p := rng.Float64() * 0.95
		eq22 := nf * (1 - p) * sumSq / ((1-p)*sumSq + (1-p)*(1-p)*cross)
		sigma := rng.Float64() * 2
		eq23 := (nf*sumSq + nf*nf*df*sigma*sigma) / (sqSum + nf*df*sigma*sigma)
		eq24 := nf * sumL2L1 / (sumL2L1 + cross)
		// Rescaled dropout: E‖g/(1−p)·D‖² = ‖g‖²/(1−p), a = 1.
		rescaled := nf * sumSq / (1 - p) / (sumSq/(1-p) + cross)

		for _, c := range []struct {
			m    Mechanism
			want float64
		}{
			{Dropout{P: p}, eq22},
			{Dropout{P: p, Rescale: true}, rescaled},
			{Langevin{Std: sigma}, eq23},
			{Quantize{}, eq24},
			{Quantize{Levels: 1}, eq24},
		} {
			e, err := Expected(c.m, g, n, d)
			if err != nil {
				t.Fatal(err)
			}
			if !mechNear(e.BatchBound, c.want, 1e-9) {
				t.Errorf("trial %d %s: B^DIM = %v, paper %v", trial, mechDesc(c.m), e.BatchBound, c.want)
			}
		}
	}
}

// QSGD's second moment ‖v‖²/s² Σ(k² + (2k+1)(r−k)) equals ‖v‖₂‖v‖₁ at s = 1.
func TestQuantizeSecondMoment(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 3))
	for range 50 {
		d := 1 + rng.IntN(12)
		v := mechRand(rng, 1, d, 0)
		if d > 1 && rng.IntN(3) == 0 {
			v[rng.IntN(d)] = 0
		}
		var s2, s1 float64
		for _, x := range v {
			s2 += x * x
			s1 += math.Abs(x)
		}
		norm := math.Sqrt(s2)
		if got := (Quantize{}).SecondMoment(v); !mechNear(got, norm*s1, mechTolExact) {
			t.Errorf("s=1: %v, want ‖v‖₂‖v‖₁ = %v", got, norm*s1)
		}
		for _, s := range []int{2, 3, 7, 100} {
			var acc float64
			for _, x := range v {
				r := float64(s) * math.Abs(x) / norm
				k := math.Floor(r)
				acc += k*k + (2*k+1)*(r-k)
			}
			want := s2 / float64(s*s) * acc
			if got := (Quantize{Levels: s}).SecondMoment(v); !mechNear(got, want, mechTolExact) {
				t.Errorf("s=%d: %v, want %v", s, got, want)
			}
		}
	}
	if got := (Quantize{}).SecondMoment([]float64{0, 0}); got != 0 {
		t.Errorf("zero row: %v", got)
	}
	// A single nonzero coordinate is quantized exactly.
	if got := (Quantize{Levels: 3}).SecondMoment([]float64{0, -2}); got != 4 {
		t.Errorf("single coordinate: %v, want 4", got)
	}
}

// mechOnly hides the package's fast moments path, so Expected takes the
// generic SecondMoment − a²‖g‖² route of a user-defined Mechanism.
type mechOnly struct{ m Mechanism }

func (w mechOnly) Name() string                       { return w.m.Name() }
func (w mechOnly) Validate() error                    { return w.m.Validate() }
func (w mechOnly) SecondMoment(row []float64) float64 { return w.m.SecondMoment(row) }
func (w mechOnly) MeanScale() float64                 { return w.m.MeanScale() }
func (w mechOnly) Apply(g []float64, n, d int, rng *rand.Rand) error {
	return w.m.Apply(g, n, d, rng)
}
func (w mechOnly) Apply32(g []float32, n, d int, rng *rand.Rand) error {
	return w.m.Apply32(g, n, d, rng)
}

func mechAll() []Mechanism {
	return []Mechanism{
		Dropout{P: 0.3},
		Dropout{P: 0.6, Rescale: true},
		Langevin{Std: 0.7},
		Quantize{},
		Quantize{Levels: 4},
	}
}

func TestExpectedGenericMechanismAndFloat32(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 5))
	n, d := 6, 9
	g := mechRand(rng, n, d, 0.4)
	g32 := mechTo32(g)
	g64 := make([]float64, len(g32))
	for i, v := range g32 {
		g64[i] = float64(v)
	}
	for _, m := range mechAll() {
		a, err := Expected(m, g, n, d)
		if err != nil {
			t.Fatal(err)
		}
		b, err := Expected(mechOnly{m}, g, n, d)
		if err != nil {
			t.Fatal(err)
		}
		if !mechNear(a.Diversity, b.Diversity, 1e-10) {
			t.Errorf("%s: fast %v, generic %v", mechDesc(m), a.Diversity, b.Diversity)
		}
		c, err := Expected32(m, g32, n, d)
		if err != nil {
			t.Fatal(err)
		}
		want, _ := Expected(m, g64, n, d)
		if !mechNear(c.Diversity, want.Diversity, mechTolExact) || c.N != n || c.Dim != d {
			t.Errorf("%s: Expected32 %+v, Expected of the same values %+v", mechDesc(m), c, want)
		}
	}
}

func TestExpectedIdentity(t *testing.T) {
	rng := rand.New(rand.NewPCG(9, 9))
	g := mechRand(rng, 5, 4, 0.3)
	base, _ := ComputeStats(g, 5, 4)
	for _, m := range []Mechanism{Dropout{}, Dropout{Rescale: true}, Langevin{}} {
		e, err := Expected(m, g, 5, 4)
		if err != nil {
			t.Fatal(err)
		}
		if !mechNear(e.Diversity, base.Diversity, mechTolExact) || e.BaseDiversity != base.Diversity ||
			e.BaseBatchBound != base.BatchBound {
			t.Errorf("%s: %+v, base %+v", mechDesc(m), e, base)
		}
	}
	// Gradients that cancel: B_S = +Inf, and an identity mechanism keeps it.
	cancel := []float64{1, -2, -1, 2}
	for _, m := range []Mechanism{Dropout{}, Langevin{}} {
		e, err := Expected(m, cancel, 2, 2)
		if err != nil {
			t.Fatal(err)
		}
		if !math.IsInf(e.Diversity, 1) || !math.IsInf(e.BatchBound, 1) || !math.IsInf(e.BaseBatchBound, 1) {
			t.Errorf("%s on cancelling gradients: %+v", mechDesc(m), e)
		}
	}
	// A real mechanism makes them finite: Δ^drop = 1/p·... > n.
	e, err := Expected(Dropout{P: 0.5}, cancel, 2, 2)
	if err != nil || math.IsInf(e.BatchBound, 0) || e.BatchBound <= 2 {
		t.Errorf("dropout on cancelling gradients: %+v, %v", e, err)
	}
}

func TestExpectedErrors(t *testing.T) {
	good := []float64{1, 2, 3, 4}
	for _, c := range []struct {
		name string
		m    Mechanism
		g    []float64
		n, d int
		want error
	}{
		{"empty", Dropout{P: 0.5}, nil, 0, 3, ErrEmpty},
		{"zero dim", Dropout{P: 0.5}, nil, 3, 0, ErrZeroDim},
		{"nan", Langevin{Std: 1}, []float64{1, math.NaN(), 3, 4}, 2, 2, ErrNonFinite},
		{"inf", Quantize{}, []float64{1, 2, math.Inf(-1), 4}, 2, 2, ErrNonFinite},
		{"all zero", Quantize{}, []float64{0, 0, 0, 0}, 2, 2, ErrAllZero},
		{"overflow", Langevin{Std: 1e300}, good, 2, 2, ErrOverflow},
		{"bad p", Dropout{P: 1}, good, 2, 2, ErrParam},
		{"bad std", Langevin{Std: -1}, good, 2, 2, ErrParam},
		{"bad levels", Quantize{Levels: -2}, good, 2, 2, ErrParam},
	} {
		_, err := Expected(c.m, c.g, c.n, c.d)
		if !errors.Is(err, c.want) {
			t.Errorf("%s: err = %v, want %v", c.name, err, c.want)
		}
		_, err = Expected32(c.m, mechTo32(c.g), c.n, c.d)
		if !errors.Is(err, c.want) {
			t.Errorf("%s (float32): err = %v, want %v", c.name, err, c.want)
		}
	}
	mechPanics(t, "nil mechanism", func() { Expected(nil, good, 2, 2) })
	mechPanics(t, "shape", func() { Expected(Dropout{}, good, 3, 2) })
	mechPanics(t, "negative", func() { Expected(Dropout{}, nil, -1, 0) })
}

func mechPanics(t *testing.T, what string, f func()) {
	t.Helper()
	defer func() {
		r := recover()
		if r == nil {
			t.Errorf("%s: no panic", what)
			return
		}
		if s, ok := r.(string); !ok || !strings.HasPrefix(s, "gdiv: ") {
			t.Errorf("%s: panic %v, want a \"gdiv: ...\" string", what, r)
		}
	}()
	f()
}

func TestMechanismValidate(t *testing.T) {
	for _, c := range []struct {
		m       Mechanism
		ok      bool
		message string
	}{
		{Dropout{P: 0}, true, ""},
		{Dropout{P: 0.999, Rescale: true}, true, ""},
		{Dropout{P: 1}, false, "gdiv: invalid parameter: dropout p = 1, want 0 ≤ p < 1"},
		{Dropout{P: -0.1}, false, "dropout p = -0.1"},
		{Dropout{P: math.NaN()}, false, "dropout p = NaN"},
		{Langevin{Std: 0}, true, ""},
		{Langevin{Std: 3}, true, ""},
		{Langevin{Std: -1}, false, "langevin std = -1"},
		{Langevin{Std: math.NaN()}, false, "langevin std = NaN"},
		{Langevin{Std: math.Inf(1)}, false, "langevin std = +Inf"},
		{Quantize{Levels: 0}, true, ""},
		{Quantize{Levels: 16}, true, ""},
		{Quantize{Levels: -1}, false, "quantize levels = -1"},
	} {
		err := c.m.Validate()
		if c.ok != (err == nil) {
			t.Errorf("%#v: Validate() = %v", c.m, err)
			continue
		}
		if err != nil && (!errors.Is(err, ErrParam) || !strings.Contains(err.Error(), c.message)) {
			t.Errorf("%#v: error %q, want ErrParam containing %q", c.m, err, c.message)
		}
	}
	for m, name := range map[Mechanism]string{Dropout{}: "dropout", Langevin{}: "langevin", Quantize{}: "quantize"} {
		if m.Name() != name {
			t.Errorf("Name() = %q, want %q", m.Name(), name)
		}
	}
	if (Dropout{P: 0.25}).MeanScale() != 0.75 || (Dropout{P: 0.25, Rescale: true}).MeanScale() != 1 ||
		(Langevin{Std: 2}).MeanScale() != 1 || (Quantize{}).MeanScale() != 1 {
		t.Error("MeanScale")
	}
}

func TestApplyInvalidLeavesBufferAndPanics(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 1))
	for _, m := range []Mechanism{Dropout{P: 1.5}, Langevin{Std: math.NaN()}, Quantize{Levels: -3}} {
		g := []float64{1, 2, 3, 4, 5, 6}
		g32 := mechTo32(g)
		if err := m.Apply(g, 2, 3, rng); !errors.Is(err, ErrParam) {
			t.Errorf("%#v: Apply err = %v", m, err)
		}
		if err := m.Apply32(g32, 2, 3, rng); !errors.Is(err, ErrParam) {
			t.Errorf("%#v: Apply32 err = %v", m, err)
		}
		for i := range g {
			if g[i] != float64(i+1) || g32[i] != float32(i+1) {
				t.Fatalf("%#v: buffer modified: %v %v", m, g, g32)
			}
		}
	}
	for _, m := range mechAll() {
		mechPanics(t, m.Name()+" shape", func() { m.Apply(make([]float64, 5), 2, 3, rng) })
		mechPanics(t, m.Name()+" shape32", func() { m.Apply32(make([]float32, 7), 2, 3, rng) })
		mechPanics(t, m.Name()+" negative", func() { m.Apply(nil, -2, 0, rng) })
		mechPanics(t, m.Name()+" nil rng", func() { m.Apply(make([]float64, 6), 2, 3, nil) })
	}
}

func TestApplyIdentity(t *testing.T) {
	rng := rand.New(rand.NewPCG(2, 2))
	g := mechRand(rng, 7, 13, 0)
	g[3] = math.Copysign(0, -1)
	for _, m := range []Mechanism{Dropout{}, Dropout{Rescale: true}, Langevin{}} {
		x := append([]float64(nil), g...)
		x32 := mechTo32(g)
		state := rand.New(rand.NewPCG(4, 4))
		if err := m.Apply(x, 7, 13, state); err != nil {
			t.Fatal(err)
		}
		if err := m.Apply32(x32, 7, 13, state); err != nil {
			t.Fatal(err)
		}
		for i := range g {
			if math.Float64bits(x[i]) != math.Float64bits(g[i]) || x32[i] != float32(g[i]) {
				t.Fatalf("%s changed entry %d: %v → %v", mechDesc(m), i, g[i], x[i])
			}
		}
		// No random numbers are drawn for the identity.
		if state.Uint64() != rand.New(rand.NewPCG(4, 4)).Uint64() {
			t.Errorf("%s consumed random numbers", mechDesc(m))
		}
	}
}

func TestDropoutValues(t *testing.T) {
	rng := rand.New(rand.NewPCG(6, 6))
	n, d := 5, 37
	g := mechRand(rng, n, d, 0)
	for _, m := range []Dropout{{P: 0.5}, {P: 0.3}, {P: 0.3, Rescale: true}, {P: 0.9, Rescale: true}} {
		x := append([]float64(nil), g...)
		x32 := mechTo32(g)
		if err := m.Apply(x, n, d, rng); err != nil {
			t.Fatal(err)
		}
		if err := m.Apply32(x32, n, d, rng); err != nil {
			t.Fatal(err)
		}
		for i, v := range x {
			want := g[i]
			if m.Rescale {
				want = g[i] * (1 / (1 - m.P))
			}
			if v != 0 && v != want {
				t.Fatalf("%s: entry %d = %v, want 0 or %v", mechDesc(m), i, v, want)
			}
			if math.Signbit(v) && v == 0 {
				t.Fatalf("%s: dropped entry %d is -0", mechDesc(m), i)
			}
			w32 := float32(float64(float32(g[i])) * (1 / (1 - m.P)))
			if !m.Rescale {
				w32 = float32(g[i])
			}
			if x32[i] != 0 && x32[i] != w32 {
				t.Fatalf("%s: float32 entry %d = %v, want 0 or %v", mechDesc(m), i, x32[i], w32)
			}
		}
	}
}

// The bit-sliced Bernoulli draws: keep frequency 1 − p and independence of
// neighbouring coordinates (within and across 64-bit words), for dyadic
// and non-dyadic p, extreme p included.
func TestDropoutFrequencies(t *testing.T) {
	rng := rand.New(rand.NewPCG(8, 8))
	const size = 64*4000 + 17
	x := make([]float64, size)
	for _, p := range []float64{0.5, 0.25, 0.1, 0.3, 0.75, 0.999, 1e-3, 1.0 / 3} {
		for i := range x {
			x[i] = 1
		}
		if err := (Dropout{P: p}).Apply(x, 1, size, rng); err != nil {
			t.Fatal(err)
		}
		var kept, pairs float64
		for i, v := range x {
			if v == 1 {
				kept++
				if i+1 < size && x[i+1] == 1 {
					pairs++
				}
			}
		}
		q := 1 - p
		if se := math.Sqrt(q * p / size); math.Abs(kept/size-q) > mechTolMean*se {
			t.Errorf("p=%v: kept fraction %v, want %v ± %v", p, kept/size, q, mechTolMean*se)
		}
		// Adjacent pairs kept: mean q² over size−1 (dependent) pairs;
		// Var ≤ 3·q²(1−q²)/(size−1) bounds the 1-dependence.
		q2 := q * q
		if se := math.Sqrt(3 * q2 * (1 - q2) / (size - 1)); math.Abs(pairs/(size-1)-q2) > mechTolMean*se {
			t.Errorf("p=%v: adjacent kept pairs %v, want %v ± %v", p, pairs/(size-1), q2, mechTolMean*se)
		}
	}
}

// Unbiasedness (and the exact variance): per-coordinate sample means of
// many draws agree with a·g within mechTolMean standard errors, with the
// standard error from each mechanism's analytic per-coordinate variance.
func TestApplyMeans(t *testing.T) {
	rng := rand.New(rand.NewPCG(10, 10))
	n, d := 3, 5
	g := mechRand(rng, n, d, 0.5)
	g[2] = 0
	norms := make([]float64, n)
	for i := range n {
		norms[i] = l2norm(g[i*d : (i+1)*d])
	}
	const draws = 20000
	for _, m := range mechAll() {
		variance := func(k int) float64 {
			v := g[k]
			switch m := m.(type) {
			case Dropout:
				if m.Rescale {
					return v * v * m.P / (1 - m.P)
				}
				return v * v * m.P * (1 - m.P)
			case Langevin:
				return m.Std * m.Std
			case Quantize:
				s := float64(max(m.Levels, 1))
				r := s * math.Abs(v) / norms[k/d]
				f := r - math.Floor(r)
				step := norms[k/d] / s
				return step * step * f * (1 - f)
			}
			panic("unreachable")
		}
		for _, single := range []bool{false, true} {
			sum := make([]float64, n*d)
			x := make([]float64, n*d)
			x32 := make([]float32, n*d)
			for range draws {
				if single {
					copy(x32, mechTo32(g))
					if err := m.Apply32(x32, n, d, rng); err != nil {
						t.Fatal(err)
					}
					for k, v := range x32 {
						sum[k] += float64(v)
					}
					continue
				}
				copy(x, g)
				if err := m.Apply(x, n, d, rng); err != nil {
					t.Fatal(err)
				}
				for k, v := range x {
					sum[k] += v
				}
			}
			a := m.MeanScale()
			for k := range sum {
				mean := sum[k] / draws
				want := a * g[k]
				tol := mechTolMean*math.Sqrt(variance(k)/draws) + 1e-6*math.Abs(g[k])
				if math.Abs(mean-want) > tol {
					t.Errorf("%s (float32 %v): coordinate %d mean %v, want %v ± %v", mechDesc(m), single, k, mean, want, tol)
				}
			}
		}
	}
}

func TestQuantizeGrid(t *testing.T) {
	rng := rand.New(rand.NewPCG(11, 11))
	n, d := 6, 23
	for _, levels := range []int{0, 1, 2, 5, 64} {
		m := Quantize{Levels: levels}
		s := float64(max(levels, 1))
		g := mechRand(rng, n, d, 0.2)
		g[5] = 0
		for j := range d { // a zero row stays zero
			g[3*d+j] = 0
		}
		g[4*d+3] = math.Copysign(0, -1)
		x := append([]float64(nil), g...)
		if err := m.Apply(x, n, d, rng); err != nil {
			t.Fatal(err)
		}
		for i := range n {
			norm := l2norm(g[i*d : (i+1)*d])
			for j := range d {
				v, q := g[i*d+j], x[i*d+j]
				if norm == 0 || v == 0 {
					if q != 0 || math.Signbit(q) {
						t.Fatalf("s=%v: zero entry (%d,%d) quantized to %v", s, i, j, q)
					}
					continue
				}
				xi := math.Abs(q) / (norm / s)
				k := math.Round(xi)
				r := s * math.Abs(v) / norm
				if math.Abs(xi-k) > 1e-12*max(1, k) || (k != math.Floor(r) && k != math.Floor(r)+1) {
					t.Fatalf("s=%v: (%d,%d): %v → %v = %v·‖v‖/s, want ⌊r⌋ or ⌊r⌋+1 with r = %v", s, i, j, v, q, xi, r)
				}
				if q != 0 && math.Signbit(q) != math.Signbit(v) {
					t.Fatalf("s=%v: (%d,%d): sign of %v → %v", s, i, j, v, q)
				}
			}
		}
	}
}

// Rows of tiny (squares underflow) and huge (squares overflow) magnitude
// quantize like the same row scaled to 1 (same draws, exact power-of-two
// scale), and stay on their grid.
func TestQuantizeExtremeScales(t *testing.T) {
	n, d := 2, 9
	g := mechRand(rand.New(rand.NewPCG(12, 12)), n, d, 0)
	ref := append([]float64(nil), g...)
	m := Quantize{Levels: 3}
	if err := m.Apply(ref, n, d, rand.New(rand.NewPCG(13, 13))); err != nil {
		t.Fatal(err)
	}
	for _, e := range []int{-1000, 1000, -1060} {
		x := make([]float64, len(g))
		for k, v := range g {
			x[k] = math.Ldexp(v, e)
		}
		if err := m.Apply(x, n, d, rand.New(rand.NewPCG(13, 13))); err != nil {
			t.Fatal(err)
		}
		tol := 1e-12
		if e < -1022 {
			tol = 1e-3 // subnormal inputs carry few bits
		}
		for k := range x {
			got := math.Ldexp(x[k], -e)
			if math.IsNaN(got) || math.IsInf(got, 0) || !mechNear(got, ref[k], tol) {
				t.Fatalf("scale 2^%d: entry %d = %v·2^%d, want %v", e, k, got, e, ref[k])
			}
		}
	}
}

// Apply32 takes the same draws as Apply: equal up to float32 rounding.
func TestApply32MatchesApply(t *testing.T) {
	rng := rand.New(rand.NewPCG(14, 14))
	n, d := 4, 150 // several 64-coordinate words, rows not word-aligned
	g32 := mechTo32(mechRand(rng, n, d, 0.3))
	g := make([]float64, len(g32))
	for i, v := range g32 {
		g[i] = float64(v)
	}
	for _, m := range mechAll() {
		x := append([]float64(nil), g...)
		x32 := append([]float32(nil), g32...)
		if err := m.Apply(x, n, d, rand.New(rand.NewPCG(15, 15))); err != nil {
			t.Fatal(err)
		}
		if err := m.Apply32(x32, n, d, rand.New(rand.NewPCG(15, 15))); err != nil {
			t.Fatal(err)
		}
		if len(x32) != n*d {
			t.Fatal("shape changed")
		}
		for k := range x {
			if !mechNear(float64(x32[k]), x[k], mechTolF32) {
				t.Fatalf("%s: entry %d: float32 %v, float64 %v", mechDesc(m), k, x32[k], x[k])
			}
		}
	}
}

// Monte Carlo agrees with the closed form within mechTolSigma standard
// errors, on data with Δ < 1 and with Δ > 1, float64 and float32.
func TestMonteCarloAgreesWithExpected(t *testing.T) {
	rng := rand.New(rand.NewPCG(16, 16))
	for _, mean := range []float64{0.8, 0} {
		n, d := 8, 5
		g := mechRand(rng, n, d, mean)
		for _, m := range mechAll() {
			e, err := Expected(m, g, n, d)
			if err != nil {
				t.Fatal(err)
			}
			for _, single := range []bool{false, true} {
				var mc MonteCarloResult
				if single {
					g32 := mechTo32(g)
					mc, err = MonteCarlo32(m, g32, n, d, 20000, rng)
					e, _ = Expected32(m, g32, n, d)
				} else {
					mc, err = MonteCarlo(m, g, n, d, 20000, rng)
				}
				if err != nil {
					t.Fatal(err)
				}
				if mc.Samples != 20000 || !(mc.StdErr > 0) || mc.BatchBound != float64(n)*mc.Diversity {
					t.Errorf("%s: %+v", mechDesc(m), mc)
				}
				if math.Abs(mc.Diversity-e.Diversity) > mechTolSigma*mc.StdErr {
					t.Errorf("%s (mean %v, float32 %v): MC Δ = %v ± %v, closed form %v",
						mechDesc(m), mean, single, mc.Diversity, mc.StdErr, e.Diversity)
				}
			}
		}
	}
}

func TestMonteCarloDeterministicAndErrors(t *testing.T) {
	g := mechRand(rand.New(rand.NewPCG(17, 17)), 4, 3, 0.5)
	orig := append([]float64(nil), g...)
	for _, m := range mechAll() {
		a, err := MonteCarlo(m, g, 4, 3, 50, rand.New(rand.NewPCG(1, 2)))
		if err != nil {
			t.Fatal(err)
		}
		b, _ := MonteCarlo(m, g, 4, 3, 50, rand.New(rand.NewPCG(1, 2)))
		if a != b {
			t.Errorf("%s: not deterministic: %+v vs %+v", mechDesc(m), a, b)
		}
	}
	for i := range g {
		if g[i] != orig[i] {
			t.Fatal("MonteCarlo modified its input")
		}
	}
	rng := rand.New(rand.NewPCG(1, 1))
	for _, c := range []struct {
		name    string
		m       Mechanism
		g       []float64
		n, d, k int
		want    error
	}{
		{"samples 1", Dropout{P: 0.5}, g, 4, 3, 1, ErrParam},
		{"samples 0", Dropout{P: 0.5}, g, 4, 3, 0, ErrParam},
		{"bad p", Dropout{P: 2}, g, 4, 3, 10, ErrParam},
		{"empty", Langevin{Std: 1}, nil, 0, 3, 10, ErrEmpty},
		{"zero dim", Langevin{Std: 1}, nil, 2, 0, 10, ErrZeroDim},
		{"nan", Quantize{}, []float64{math.NaN(), 1}, 1, 2, 10, ErrNonFinite},
		{"all zero", Quantize{}, []float64{0, 0}, 1, 2, 10, ErrAllZero},
		{"overflow", Langevin{Std: 1e300}, g, 4, 3, 10, ErrOverflow},
	} {
		if _, err := MonteCarlo(c.m, c.g, c.n, c.d, c.k, rng); !errors.Is(err, c.want) {
			t.Errorf("%s: err = %v, want %v", c.name, err, c.want)
		}
	}
	mechPanics(t, "nil rng", func() { MonteCarlo(Dropout{}, g, 4, 3, 10, nil) })
	mechPanics(t, "nil mechanism", func() { MonteCarlo(nil, g, 4, 3, 10, rng) })
	mechPanics(t, "shape", func() { MonteCarlo(Dropout{}, g, 5, 3, 10, rng) })
	// Identity on cancelling gradients: every draw has ‖Σ‖² = 0.
	mc, err := MonteCarlo(Dropout{}, []float64{1, -1}, 2, 1, 5, rng)
	if err != nil || !math.IsInf(mc.Diversity, 1) || mc.StdErr != 0 {
		t.Errorf("identity on cancelling gradients: %+v, %v", mc, err)
	}
}

// Theorem 9 (Appendix D): where B_S ≤ n, every DIM gives B^DIM ≥ B_S;
// where B_S > n (negative cross terms, Δ > 1), 1 < Δ^DIM ≤ Δ.
func TestTheorem9(t *testing.T) {
	rng := rand.New(rand.NewPCG(18, 18))
	var below, above int // instances with B_S ≤ n and with B_S > n
	for trial := range 200 {
		n, d := 2+rng.IntN(10), 1+rng.IntN(12)
		g := mechRand(rng, n, d, rng.NormFloat64())
		if trial%2 == 1 { // pull the mean toward 0: Σg small, Δ > 1 likely
			for j := range d {
				var c float64
				for i := range n {
					c += g[i*d+j]
				}
				for i := range n {
					g[i*d+j] -= 0.9 * c / float64(n)
				}
			}
		}
		ms := []Mechanism{
			Dropout{P: rng.Float64() * 0.99},
			Dropout{P: rng.Float64() * 0.99, Rescale: true},
			Langevin{Std: rng.ExpFloat64()},
			Quantize{Levels: rng.IntN(5)},
		}
		for _, m := range ms {
			e, err := Expected(m, g, n, d)
			if err != nil {
				t.Fatal(err)
			}
			const slack = 1e-12
			if e.BaseBatchBound <= float64(n) {
				below++
				if e.BatchBound < e.BaseBatchBound*(1-slack) {
					t.Errorf("trial %d %s: B_S = %v ≤ n = %d but B^DIM = %v", trial, mechDesc(m), e.BaseBatchBound, n, e.BatchBound)
				}
				continue
			}
			above++
			if !(e.Diversity > 1 && e.Diversity <= e.BaseDiversity*(1+slack)) {
				t.Errorf("trial %d %s: Δ = %v > 1 but Δ^DIM = %v", trial, mechDesc(m), e.BaseDiversity, e.Diversity)
			}
		}
	}
	if below < 100 || above < 100 {
		t.Errorf("instances: %d with B_S ≤ n, %d with B_S > n; want both ≥ 100", below, above)
	}
}
