package gdiv

import (
	"errors"
	"math"
	"math/rand/v2"
	"testing"
)

// Named tolerances of the bounds tests.
const (
	bndTolExact = 1e-12 // hand-computed values
	bndTolEig   = 1e-9  // eigenvalue vs. power-iteration oracle
	bndSlack    = 1e-12 // relative slack for "B_S ≥ bound" under rounding
)

// bndPowerSigmaSq is the oracle for σ²_max(X): power iteration on XᵀX,
// run until the Rayleigh quotient is stationary.
func bndPowerSigmaSq(x []float64, n, d int) float64 {
	v := make([]float64, d)
	for j := range v {
		v[j] = 1 + float64(j%7)/10
	}
	xv := make([]float64, n)
	var lam float64
	for range 20000 {
		for i := range n {
			var s float64
			for j := range d {
				s += x[i*d+j] * v[j]
			}
			xv[i] = s
		}
		w := make([]float64, d)
		for i := range n {
			for j := range d {
				w[j] += x[i*d+j] * xv[i]
			}
		}
		var vv, vw, ww float64
		for j := range d {
			vv += v[j] * v[j]
			vw += v[j] * w[j]
			ww += w[j] * w[j]
		}
		next := vw / vv
		norm := math.Sqrt(ww)
		for j := range d {
			v[j] = w[j] / norm
		}
		if math.Abs(next-lam) <= 1e-15*next {
			return next
		}
		lam = next
	}
	return lam
}

func TestBoundGLMRandom(t *testing.T) {
	rng := rand.New(rand.NewPCG(21, 21))
	for trial := range 60 {
		n, d := 1+rng.IntN(12), 1+rng.IntN(12)
		x := mechRand(rng, n, d, rng.NormFloat64())
		b, err := BoundGLM(x, n, d)
		if err != nil {
			t.Fatal(err)
		}
		if b.N != n || b.Dim != d || b.BatchBoundLower < 0 || b.BatchBoundLower > float64(n) {
			t.Fatalf("trial %d: %+v", trial, b)
		}
		if want := bndPowerSigmaSq(x, n, d); !mechNear(b.SigmaMaxSq, want, bndTolEig) {
			t.Errorf("trial %d (%d×%d): σ²_max = %v, power iteration %v", trial, n, d, b.SigmaMaxSq, want)
		}
		minSq := math.Inf(1)
		for i := range n {
			minSq = min(minSq, sqNorm(x[i*d:(i+1)*d]))
		}
		if !mechNear(b.MinSqNorm, minSq, bndTolExact) {
			t.Errorf("trial %d: min‖x_i‖² = %v, want %v", trial, b.MinSqNorm, minSq)
		}
		// Theorem 1: any GLM gradients a_i x_i, signs included.
		g := make([]float64, n*d)
		for range 50 {
			for i := range n {
				a := rng.NormFloat64() * math.Exp(2*rng.NormFloat64())
				for j := range d {
					g[i*d+j] = a * x[i*d+j]
				}
			}
			st, err := ComputeStats(g, n, d)
			if err != nil {
				t.Fatal(err)
			}
			if st.BatchBound < b.BatchBoundLower*(1-bndSlack) {
				t.Fatalf("trial %d: B_S = %v < Theorem 1 bound %v", trial, st.BatchBound, b.BatchBoundLower)
			}
		}
	}
}

func TestBoundGLMTightCases(t *testing.T) {
	// Orthogonal rows of equal norm: min‖x‖² = σ²_max = c², bound n, and
	// every a gives B_S = n exactly.
	x := []float64{
		3, 0, 0, 0,
		0, 0, -3, 0,
		0, 3, 0, 0,
	}
	b, err := BoundGLM(x, 3, 4)
	if err != nil {
		t.Fatal(err)
	}
	if !mechNear(b.MinSqNorm, 9, bndTolExact) || !mechNear(b.SigmaMaxSq, 9, bndTolExact) ||
		!mechNear(b.BatchBoundLower, 3, bndTolExact) {
		t.Errorf("orthogonal equal norms: %+v, want bound 3", b)
	}
	// Orthogonal rows, norms 1, 2, 4: bound n·1/16.
	y := []float64{1, 0, 0, 0, 2, 0, 0, 0, 4}
	b, _ = BoundGLM(y, 3, 3)
	if !mechNear(b.BatchBoundLower, 3.0/16, bndTolExact) {
		t.Errorf("orthogonal unequal norms: %+v, want 3/16", b)
	}
	// Equality: all rows equal, σ²_max = n‖x‖², bound 1; a_i = 1 gives B_S = 1.
	const n, d = 5, 3
	z := make([]float64, 0, n*d)
	for range n {
		z = append(z, 1, -2, 0.5)
	}
	b, _ = BoundGLM(z, n, d)
	if !mechNear(b.SigmaMaxSq, n*5.25, bndTolExact) || !mechNear(b.BatchBoundLower, 1, bndTolExact) {
		t.Errorf("equal rows: %+v, want σ² = %v, bound 1", b, n*5.25)
	}
	st, _ := ComputeStats(z, n, d)
	if !mechNear(st.BatchBound, b.BatchBoundLower, bndTolExact) {
		t.Errorf("equal rows: B_S = %v, bound %v: equality expected", st.BatchBound, b.BatchBoundLower)
	}
	// Both Gram orientations agree (n ≤ d uses XXᵀ, n > d uses XᵀX).
	rng := rand.New(rand.NewPCG(22, 22))
	w := mechRand(rng, 4, 7, 0.2)
	wt := make([]float64, len(w))
	for i := range 4 {
		for j := range 7 {
			wt[j*4+i] = w[i*7+j]
		}
	}
	b1, _ := BoundGLM(w, 4, 7)
	b2, _ := BoundGLM(wt, 7, 4)
	if !mechNear(b1.SigmaMaxSq, b2.SigmaMaxSq, bndTolExact) {
		t.Errorf("σ²_max(X) = %v, σ²_max(Xᵀ) = %v", b1.SigmaMaxSq, b2.SigmaMaxSq)
	}
}

func TestBoundGLMScaleAndDegenerate(t *testing.T) {
	rng := rand.New(rand.NewPCG(23, 23))
	x := mechRand(rng, 6, 4, 0.5)
	ref, _ := BoundGLM(x, 6, 4)
	for _, e := range []int{-700, -300, 300, 700} {
		y := make([]float64, len(x))
		for k, v := range x {
			y[k] = math.Ldexp(v, e)
		}
		b, err := BoundGLM(y, 6, 4)
		if err != nil {
			t.Fatal(err)
		}
		if !mechNear(b.BatchBoundLower, ref.BatchBoundLower, bndTolExact) {
			t.Errorf("scale 2^%d: bound %v, want %v", e, b.BatchBoundLower, ref.BatchBoundLower)
		}
	}
	// A zero row: the bound is 0 (valid, trivial).
	x[2*4], x[2*4+1], x[2*4+2], x[2*4+3] = 0, 0, 0, 0
	if b, err := BoundGLM(x, 6, 4); err != nil || b.BatchBoundLower != 0 || b.MinSqNorm != 0 {
		t.Errorf("zero row: %+v, %v", b, err)
	}
	for _, c := range []struct {
		name string
		x    []float64
		n, d int
		want error
	}{
		{"empty", nil, 0, 2, ErrEmpty},
		{"zero dim", nil, 2, 0, ErrZeroDim},
		{"nan", []float64{1, math.NaN()}, 1, 2, ErrNonFinite},
		{"inf", []float64{1, math.Inf(1)}, 2, 1, ErrNonFinite},
		{"all zero", []float64{0, 0, 0, 0}, 2, 2, ErrAllZero},
	} {
		if _, err := BoundGLM(c.x, c.n, c.d); !errors.Is(err, c.want) {
			t.Errorf("%s: err = %v, want %v", c.name, err, c.want)
		}
	}
	mechPanics(t, "shape", func() { BoundGLM(make([]float64, 5), 2, 3) })
}

// bndDegreeOracle is the O(n²d) definition: for each pair i ≠ j, test
// whether the supports overlap.
func bndDegreeOracle(g []float64, n, d int) int {
	rho := 0
	for i := range n {
		deg := 0
		for j := range n {
			if i == j {
				continue
			}
			for l := range d {
				if g[i*d+l] != 0 && g[j*d+l] != 0 {
					deg++
					break
				}
			}
		}
		rho = max(rho, deg)
	}
	return rho
}

func TestBoundSparseHandDrawn(t *testing.T) {
	for _, c := range []struct {
		name string
		n, d int
		g    []float64
		rho  int
	}{
		{"disjoint", 3, 4, []float64{
			1, 0, 0, 0,
			0, 2, 3, 0,
			0, 0, 0, -1,
		}, 0},
		{"star of 4 leaves plus an isolated row", 6, 6, []float64{
			1, 1, 1, 1, 0, 0, // centre
			1, 0, 0, 0, 0, 0,
			0, 1, 0, 0, 0, 0,
			0, 0, 1, 0, 0, 0,
			0, 0, 0, 1, 0, 0,
			0, 0, 0, 0, 0, 1,
		}, 4},
		{"path", 4, 5, []float64{
			1, 1, 0, 0, 0,
			0, 1, 1, 0, 0,
			0, 0, 1, 1, 0,
			0, 0, 0, 1, 1,
		}, 2},
		{"clique on one coordinate", 4, 3, []float64{
			1, 0, 0,
			2, 0, 5,
			-1, 3, 0,
			0.5, 0, 0,
		}, 3},
		{"zero row and -0 are no support", 3, 2, []float64{
			1, math.Copysign(0, -1),
			0, 0,
			0, 1,
		}, 0},
		{"single row", 1, 3, []float64{1, 2, 3}, 0},
	} {
		b, err := BoundSparse(c.g, c.n, c.d)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		want := float64(c.n) / float64(c.rho+1)
		if b.MaxDegree != c.rho || b.BatchBoundLower != want || b.N != c.n || b.Dim != c.d {
			t.Errorf("%s: %+v, want ρ = %d, bound %v", c.name, b, c.rho, want)
		}
		if st, _ := ComputeStats(c.g, c.n, c.d); st.BatchBound < want*(1-bndSlack) {
			t.Errorf("%s: B_S = %v < %v", c.name, st.BatchBound, want)
		}
	}
}

func TestBoundSparseRandom(t *testing.T) {
	rng := rand.New(rand.NewPCG(24, 24))
	for trial := range 100 {
		n, d := 1+rng.IntN(30), 1+rng.IntN(40)
		density := rng.Float64() * 0.3
		support := make([]bool, n*d)
		for k := range support {
			support[k] = rng.Float64() < density
		}
		support[rng.IntN(n*d)] = true
		g := make([]float64, n*d)
		for k, s := range support {
			if s {
				g[k] = 1
			}
		}
		b, err := BoundSparse(g, n, d)
		if err != nil {
			t.Fatal(err)
		}
		if want := bndDegreeOracle(g, n, d); b.MaxDegree != want {
			t.Fatalf("trial %d: ρ = %d, oracle %d", trial, b.MaxDegree, want)
		}
		// Theorem 2 for random values (signs included) on these supports.
		for range 30 {
			for k, s := range support {
				if s {
					g[k] = rng.NormFloat64() + 0.5
					if g[k] == 0 {
						g[k] = 1
					}
				}
			}
			st, err := ComputeStats(g, n, d)
			if err != nil {
				t.Fatal(err)
			}
			if st.BatchBound < b.BatchBoundLower*(1-bndSlack) {
				t.Fatalf("trial %d: B_S = %v < n/(ρ+1) = %v", trial, st.BatchBound, b.BatchBoundLower)
			}
		}
	}
}

func TestBoundSparseErrors(t *testing.T) {
	for _, c := range []struct {
		name string
		g    []float64
		n, d int
		want error
	}{
		{"empty", nil, 0, 2, ErrEmpty},
		{"zero dim", nil, 3, 0, ErrZeroDim},
		{"nan", []float64{0, math.NaN()}, 1, 2, ErrNonFinite},
		{"all zero", []float64{0, 0, 0}, 3, 1, ErrAllZero},
	} {
		if _, err := BoundSparse(c.g, c.n, c.d); !errors.Is(err, c.want) {
			t.Errorf("%s: err = %v, want %v", c.name, err, c.want)
		}
	}
	mechPanics(t, "shape", func() { BoundSparse(make([]float64, 3), 2, 2) })
}

func TestStabilityStep(t *testing.T) {
	const beta, lambda = 4.0, 0.5
	// B = 1: serial SGD's 2/β and 2/(β+λ); the cap 1/(2λ) = 1 does not bind.
	if g, _ := StabilityStepConvex(beta, 10, 1, 3); g != 0.5 {
		t.Errorf("convex B=1: %v, want 2/β = 0.5", g)
	}
	if g, _ := StabilityStepStronglyConvex(beta, lambda, 10, 1, 3); !mechNear(g, 2/4.5, bndTolExact) {
		t.Errorf("strongly convex B=1: %v, want 2/(β+λ)", g)
	}
	// n = 1 is fine for B = 1.
	if g, err := StabilityStepConvex(beta, 1, 1, 3); err != nil || g != 0.5 {
		t.Errorf("n=1, B=1: %v, %v", g, err)
	}
	// Hand-computed: n = 11, B = 5, B̄ = 8: factor 1 + 1/10 + 4/8 = 1.6.
	if g, _ := StabilityStepConvex(beta, 11, 5, 8); !mechNear(g, 2/(4*1.6), bndTolExact) {
		t.Errorf("convex: %v, want %v", g, 2/(4*1.6))
	}
	// Strongly convex, same: eq. (11) gives 2/(4.5·1.6) = 0.2778; the cap
	// 1/(2·5·0.5) = 0.2 binds.
	if g, _ := StabilityStepStronglyConvex(beta, lambda, 11, 5, 8); !mechNear(g, 0.2, bndTolExact) {
		t.Errorf("strongly convex with cap: %v, want 0.2", g)
	}
	// Small λ: the cap 1/(2·5·0.01) = 10 does not bind.
	if g, _ := StabilityStepStronglyConvex(beta, 0.01, 11, 5, 8); !mechNear(g, 2/(4.01*1.6), bndTolExact) {
		t.Errorf("strongly convex without cap: %v, want %v", g, 2/(4.01*1.6))
	}
	// The cap at B = 1: β < 3λ.
	if g, _ := StabilityStepStronglyConvex(1, 0.5, 10, 1, 1); g != 1 {
		t.Errorf("B=1 cap 1/(2λ): %v, want 1", g)
	}
	// B̄ = +Inf: only the 1/(n−1) term remains.
	if g, _ := StabilityStepConvex(2, 5, 100, math.Inf(1)); !mechNear(g, 1/1.25, bndTolExact) {
		t.Errorf("B̄ = +Inf: %v, want 0.8", g)
	}
	// Monotone: decreasing in B, increasing in B̄.
	for _, strong := range []bool{false, true} {
		step := func(batch int, bbar float64) float64 {
			if strong {
				g, _ := StabilityStepStronglyConvex(beta, 0.05, 50, batch, bbar)
				return g
			}
			g, _ := StabilityStepConvex(beta, 50, batch, bbar)
			return g
		}
		prev := math.Inf(1)
		for batch := 1; batch <= 64; batch++ {
			g := step(batch, 10)
			if !(g <= prev) || (batch > 1 && !(g < prev)) {
				t.Errorf("strong=%v: γ(B=%d) = %v, γ(B=%d) = %v: not decreasing", strong, batch, g, batch-1, prev)
			}
			prev = g
		}
		prev = 0
		for _, bbar := range []float64{0.5, 1, 2, 10, 100, 1e6, math.Inf(1)} {
			g := step(8, bbar)
			if !(g >= prev) {
				t.Errorf("strong=%v: γ(B̄=%v) = %v < %v: not increasing", strong, bbar, g, prev)
			}
			prev = g
		}
	}
	for _, c := range []struct {
		name          string
		beta, lambda  float64
		n, batch      int
		bbar          float64
		strongOnlyErr bool
	}{
		{"beta 0", 0, 1, 10, 2, 5, false},
		{"beta NaN", math.NaN(), 1, 10, 2, 5, false},
		{"beta Inf", math.Inf(1), 1, 10, 2, 5, false},
		{"batch 0", 1, 1, 10, 0, 5, false},
		{"n 1 with batch 2", 1, 1, 1, 2, 5, false},
		{"n 0", 1, 1, 0, 1, 5, false},
		{"bbar 0", 1, 1, 10, 2, 0, false},
		{"bbar negative", 1, 1, 10, 2, -3, false},
		{"bbar NaN", 1, 1, 10, 2, math.NaN(), false},
		{"lambda 0", 1, 0, 10, 2, 5, true},
		{"lambda negative", 1, -1, 10, 2, 5, true},
		{"lambda NaN", 1, math.NaN(), 10, 2, 5, true},
	} {
		_, err := StabilityStepConvex(c.beta, c.n, c.batch, c.bbar)
		if c.strongOnlyErr != (err == nil) || (err != nil && !errors.Is(err, ErrParam)) {
			t.Errorf("%s: convex err = %v", c.name, err)
		}
		if _, err := StabilityStepStronglyConvex(c.beta, c.lambda, c.n, c.batch, c.bbar); !errors.Is(err, ErrParam) {
			t.Errorf("%s: strongly convex err = %v, want ErrParam", c.name, err)
		}
	}
}
