package gdiv

import (
	"errors"
	"math"
	"math/rand/v2"
	"strings"
	"testing"

	"gonum.org/v1/gonum/floats/scalar"
	"gonum.org/v1/gonum/mat"
)

// Named tolerances.
const (
	tolExact = 1e-12 // exact formulas in float64 on small, well-scaled inputs
	tolSum   = 1e-10 // long float64 sums whose order differs from the oracle's
)

func near(a, b, tol float64) bool {
	if math.IsInf(a, 0) || math.IsInf(b, 0) {
		return a == b
	}
	return scalar.EqualWithinAbsOrRel(a, b, tol, tol)
}

// naiveStats is the oracle: the second form of Definition 4 (eq. 4),
// Σ‖g_i‖² + Σ_{i≠j}⟨g_i, g_j⟩ for the denominator, by a double loop over
// pairs — a different computation from the kernel's sum vector.
func naiveStats(rows [][]float64) (sumSq, sqSum float64) {
	for i, gi := range rows {
		for j, gj := range rows {
			var dot float64
			for k := range gi {
				dot += gi[k] * gj[k]
			}
			if i == j {
				sumSq += dot
			}
			sqSum += dot
		}
	}
	return sumSq, sqSum
}

func flatten(rows [][]float64) []float64 {
	var out []float64
	for _, r := range rows {
		out = append(out, r...)
	}
	return out
}

func randRows(rng *rand.Rand, n, d int) [][]float64 {
	rows := make([][]float64, n)
	for i := range rows {
		rows[i] = make([]float64, d)
		for j := range rows[i] {
			rows[i][j] = rng.NormFloat64()
		}
	}
	return rows
}

func mustStats(t *testing.T, rows [][]float64) Stats {
	t.Helper()
	st, err := ComputeStats(flatten(rows), len(rows), len(rows[0]))
	if err != nil {
		t.Fatalf("ComputeStats: %v", err)
	}
	return st
}

func TestStatsHandCases(t *testing.T) {
	inf := math.Inf(1)
	for _, tc := range []struct {
		name string
		rows [][]float64
		want Stats
	}{
		{"orthogonal", [][]float64{{1, 0}, {0, 1}},
			Stats{N: 2, Dim: 2, SumSqNorms: 2, SqNormOfSum: 2, M2: 1, G: 0.5, Diversity: 1, BatchBound: 2, NoiseScale: 1}},
		{"identical", [][]float64{{1, 0}, {1, 0}},
			Stats{N: 2, Dim: 2, SumSqNorms: 2, SqNormOfSum: 4, M2: 1, G: 1, Diversity: 0.5, BatchBound: 1, NoiseScale: 0}},
		// norms 5, 10, 1; sum (4, 2): 16/20.
		{"mixed", [][]float64{{1, 2}, {3, -1}, {0, 1}},
			Stats{N: 3, Dim: 2, SumSqNorms: 16, SqNormOfSum: 20, M2: 16.0 / 3, G: 20.0 / 9, Diversity: 0.8, BatchBound: 2.4, NoiseScale: 1.4}},
		{"cancelling", [][]float64{{1, 0}, {-1, 0}},
			Stats{N: 2, Dim: 2, SumSqNorms: 2, SqNormOfSum: 0, M2: 1, G: 0, Diversity: inf, BatchBound: inf, NoiseScale: inf}},
		{"one row", [][]float64{{3, 4}},
			Stats{N: 1, Dim: 2, SumSqNorms: 25, SqNormOfSum: 25, M2: 25, G: 25, Diversity: 1, BatchBound: 1, NoiseScale: 0}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := mustStats(t, tc.rows)
			w := tc.want
			if got.N != w.N || got.Dim != w.Dim {
				t.Fatalf("shape %d×%d, want %d×%d", got.N, got.Dim, w.N, w.Dim)
			}
			for _, f := range []struct {
				name      string
				got, want float64
			}{
				{"SumSqNorms", got.SumSqNorms, w.SumSqNorms}, {"SqNormOfSum", got.SqNormOfSum, w.SqNormOfSum},
				{"M2", got.M2, w.M2}, {"G", got.G, w.G}, {"Diversity", got.Diversity, w.Diversity},
				{"BatchBound", got.BatchBound, w.BatchBound}, {"NoiseScale", got.NoiseScale, w.NoiseScale},
			} {
				if !near(f.got, f.want, tolExact) {
					t.Errorf("%s = %v, want %v", f.name, f.got, f.want)
				}
			}
			// float32 input gives the same numbers (these values are exact in float32).
			got32, err := ComputeStats32(toF32(flatten(tc.rows)), len(tc.rows), len(tc.rows[0]))
			if err != nil || !near(got32.Diversity, w.Diversity, tolExact) || !near(got32.SumSqNorms, w.SumSqNorms, tolExact) {
				t.Errorf("float32: %+v, %v", got32, err)
			}
		})
	}
}

func toF32(x []float64) []float32 {
	out := make([]float32, len(x))
	for i, v := range x {
		out[i] = float32(v)
	}
	return out
}

func TestStatsAgainstPairwiseOracle(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 7))
	for _, sh := range [][2]int{{1, 1}, {2, 3}, {5, 1}, {7, 13}, {16, 64}, {3, 5000}, {40, 2049}} {
		rows := randRows(rng, sh[0], sh[1])
		st := mustStats(t, rows)
		sumSq, sqSum := naiveStats(rows)
		if !near(st.SumSqNorms, sumSq, tolSum) || !near(st.SqNormOfSum, sqSum, tolSum) {
			t.Errorf("%v: sums (%v, %v), oracle (%v, %v)", sh, st.SumSqNorms, st.SqNormOfSum, sumSq, sqSum)
		}
		if !near(st.Diversity, sumSq/sqSum, tolSum) || !near(st.BatchBound, float64(sh[0])*sumSq/sqSum, tolSum) {
			t.Errorf("%v: Δ = %v, oracle %v", sh, st.Diversity, sumSq/sqSum)
		}
		// B_S = M²/G (Appendix B.1) and noise scale = trΣ/G with trΣ = M² − G.
		if !near(st.BatchBound, st.M2/st.G, tolSum) || !near(st.NoiseScale, (st.M2-st.G)/st.G, 1e-9) {
			t.Errorf("%v: B_S = %v, M²/G = %v; noise %v vs %v", sh, st.BatchBound, st.M2/st.G, st.NoiseScale, (st.M2-st.G)/st.G)
		}
	}
}

func TestStatsInvariances(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 99))
	for trial := range 20 {
		n, d := 2+rng.IntN(20), 1+rng.IntN(30)
		rows := randRows(rng, n, d)
		if trial%3 == 0 { // correlated rows: a common direction plus noise
			for i := range rows {
				for j := range rows[i] {
					rows[i][j] += 3 * float64(j%2)
				}
			}
		}
		base := mustStats(t, rows)

		// Δ ≥ 1/n, i.e. B_S ≥ 1 (Cauchy–Schwarz).
		if base.Diversity < 1/float64(n)*(1-tolExact) || base.BatchBound < 1-tolExact {
			t.Fatalf("Δ = %v < 1/n = %v", base.Diversity, 1/float64(n))
		}

		// Row permutation.
		perm := rng.Perm(n)
		pr := make([][]float64, n)
		for i, p := range perm {
			pr[i] = rows[p]
		}
		if st := mustStats(t, pr); !near(st.Diversity, base.Diversity, tolSum) {
			t.Errorf("permutation changed Δ: %v vs %v", st.Diversity, base.Diversity)
		}

		// Scaling all gradients by c keeps Δ and scales the sums by c².
		c := 0.01 + 10*rng.Float64()
		sc := make([][]float64, n)
		for i := range rows {
			sc[i] = make([]float64, d)
			for j := range rows[i] {
				sc[i][j] = c * rows[i][j]
			}
		}
		if st := mustStats(t, sc); !near(st.Diversity, base.Diversity, tolSum) || !near(st.SumSqNorms, c*c*base.SumSqNorms, tolSum) {
			t.Errorf("scaling by %v: Δ %v vs %v", c, st.Diversity, base.Diversity)
		}

		// A rotation (random orthogonal Q from a QR factorisation) keeps Δ.
		q := randomOrthogonal(rng, d)
		rot := make([][]float64, n)
		for i := range rows {
			v := mat.NewVecDense(d, nil)
			v.MulVec(q, mat.NewVecDense(d, rows[i]))
			rot[i] = v.RawVector().Data
		}
		if st := mustStats(t, rot); !near(st.Diversity, base.Diversity, 1e-9) {
			t.Errorf("rotation changed Δ: %v vs %v", st.Diversity, base.Diversity)
		}

		// Exact r-fold tiling divides Δ by r and keeps B_S.
		r := 2 + rng.IntN(4)
		var tiled [][]float64
		for range r {
			tiled = append(tiled, rows...)
		}
		st := mustStats(t, tiled)
		if !near(st.Diversity, base.Diversity/float64(r), tolSum) || !near(st.BatchBound, base.BatchBound, tolSum) {
			t.Errorf("tiling ×%d: Δ %v (want %v), B_S %v (want %v)", r, st.Diversity, base.Diversity/float64(r), st.BatchBound, base.BatchBound)
		}
	}
}

func randomOrthogonal(rng *rand.Rand, d int) *mat.Dense {
	a := mat.NewDense(d, d, nil)
	for i := range d {
		for j := range d {
			a.Set(i, j, rng.NormFloat64())
		}
	}
	var qr mat.QR
	qr.Factorize(a)
	var q mat.Dense
	qr.QTo(&q)
	return &q
}

func TestStatsOrthogonalRowsHaveUnitDiversity(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for _, d := range []int{1, 2, 5, 17} {
		q := randomOrthogonal(rng, d)
		n := 1 + rng.IntN(d)
		rows := make([][]float64, n)
		for i := range rows {
			scale := 0.1 + 5*rng.Float64() // unequal norms do not matter
			rows[i] = make([]float64, d)
			for j := range d {
				rows[i][j] = scale * q.At(i, j)
			}
		}
		if st := mustStats(t, rows); !near(st.Diversity, 1, 1e-9) || !near(st.BatchBound, float64(n), 1e-9) {
			t.Errorf("d=%d n=%d orthogonal rows: Δ = %v, B_S = %v", d, n, st.Diversity, st.BatchBound)
		}
	}
}

func TestStatsErrors(t *testing.T) {
	nan, inf := math.NaN(), math.Inf(1)
	for _, tc := range []struct {
		name    string
		grads   []float64
		n, d    int
		want    error
		message string
	}{
		{"empty", nil, 0, 3, ErrEmpty, "n = 0"},
		{"zero dim", nil, 3, 0, ErrZeroDim, "d = 0"},
		{"NaN", []float64{1, 2, 3, 4, 5, nan}, 2, 3, ErrNonFinite, "row 1, column 2"},
		{"Inf", []float64{inf, 0}, 1, 2, ErrNonFinite, "row 0, column 0"},
		{"-Inf", []float64{0, 1, -inf, 1}, 2, 2, ErrNonFinite, "row 1, column 0"},
		{"overflow", []float64{1e200, 1e200}, 1, 2, ErrOverflow, "overflow"},
		{"all zero", []float64{0, 0, 0, 0}, 2, 2, ErrAllZero, "0/0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st, err := ComputeStats(tc.grads, tc.n, tc.d)
			if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.message) {
				t.Fatalf("err = %v, want %v containing %q (stats %+v)", err, tc.want, tc.message, st)
			}
			if _, err32 := ComputeStats32(toF32(tc.grads), tc.n, tc.d); tc.name != "overflow" && !errors.Is(err32, tc.want) {
				t.Errorf("float32: err = %v, want %v", err32, tc.want)
			}
		})
	}
	// float32 cannot overflow a float64 sum of squares: max float32² ≈ 1e77.
	if st, err := ComputeStats32([]float32{math.MaxFloat32, math.MaxFloat32}, 2, 1); err != nil || st.Diversity != 0.5 {
		t.Errorf("float32 max values: %+v, %v", st, err)
	}
}

func TestStatsPanicsOnMisuse(t *testing.T) {
	for _, tc := range []struct {
		name string
		f    func()
	}{
		{"length", func() { _, _ = ComputeStats(make([]float64, 5), 2, 3) }},
		{"negative n", func() { _, _ = ComputeStats(nil, -1, 3) }},
		{"diff lengths", func() { _, _ = DifferentialStats(make([]float64, 6), make([]float64, 4), 2, 3) }},
		{"sums negative n", func() { _, _ = StatsFromSums(-1, 1, 1, 1) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			defer func() {
				r := recover()
				if r == nil || !strings.HasPrefix(r.(string), "gdiv: ") {
					t.Errorf("recover() = %v, want a gdiv: panic", r)
				}
			}()
			tc.f()
		})
	}
}

func TestStatsFromSumsValidation(t *testing.T) {
	for _, tc := range []struct {
		name         string
		n            int
		sumSq, sqSum float64
		want         error
	}{
		{"cauchy-schwarz", 2, 1, 2.5, ErrParam},
		{"negative", 2, -1, 1, ErrParam},
		{"nan", 2, math.NaN(), 1, ErrNonFinite},
		{"inf", 2, math.Inf(1), 1, ErrOverflow},
		{"empty", 0, 1, 1, ErrEmpty},
	} {
		if _, err := StatsFromSums(tc.n, 3, tc.sumSq, tc.sqSum); !errors.Is(err, tc.want) {
			t.Errorf("%s: err = %v, want %v", tc.name, err, tc.want)
		}
	}
	// The Cauchy–Schwarz equality case (identical rows) is accepted.
	if st, err := StatsFromSums(4, 3, 4, 16); err != nil || st.BatchBound != 1 {
		t.Errorf("equality case: %+v, %v", st, err)
	}
}

func TestDifferentialStats(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	n, d := 9, 11
	a, b := flatten(randRows(rng, n, d)), flatten(randRows(rng, n, d))
	diff := make([]float64, len(a))
	for i := range a {
		diff[i] = a[i] - b[i]
	}
	want, err := ComputeStats(diff, n, d)
	if err != nil {
		t.Fatal(err)
	}
	got, err := DifferentialStats(a, b, n, d)
	if err != nil || !near(got.Diversity, want.Diversity, tolExact) || !near(got.SqNormOfSum, want.SqNormOfSum, tolExact) {
		t.Errorf("DifferentialStats = %+v, %v; want %+v", got, err, want)
	}
	got32, err := DifferentialStats32(toF32(a), toF32(b), n, d)
	if err != nil || !near(got32.Diversity, want.Diversity, 1e-5) {
		t.Errorf("DifferentialStats32 = %+v, %v", got32, err)
	}
	if _, err := DifferentialStats(a, a, n, d); !errors.Is(err, ErrAllZero) {
		t.Errorf("w = w': err = %v, want ErrAllZero", err)
	}
	b[3*d+4] = math.NaN()
	if _, err := DifferentialStats(a, b, n, d); !errors.Is(err, ErrNonFinite) || !strings.Contains(err.Error(), "gw2 at row 3, column 4") {
		t.Errorf("NaN in gw2: err = %v", err)
	}
}

func TestAccumulatorMatchesWholeBuffer(t *testing.T) {
	rng := rand.New(rand.NewPCG(11, 12))
	n, d := 37, 23
	rows := randRows(rng, n, d)
	whole := mustStats(t, rows)
	flat := flatten(rows)

	// Chunks of varying size, float64 and float32 mixed with AddSums.
	acc := NewAccumulator(d)
	for lo := 0; lo < n; {
		hi := min(n, lo+1+rng.IntN(8))
		if err := acc.Add(flat[lo*d:hi*d], hi-lo); err != nil {
			t.Fatal(err)
		}
		lo = hi
	}
	st, err := acc.Stats()
	if err != nil || !near(st.Diversity, whole.Diversity, tolExact) || acc.N() != n {
		t.Fatalf("chunked: %+v, %v; want %+v", st, err, whole)
	}

	// Two "ranks" merged, and the all-reduce path through AddSums.
	r0, r1 := NewAccumulator(d), NewAccumulator(d)
	_ = r0.Add(flat[:20*d], 20)
	_ = r1.Add32(toF32(flat[20*d:]), n-20)
	r0.Merge(r1)
	if st, _ := r0.Stats(); !near(st.Diversity, whole.Diversity, 1e-6) {
		t.Errorf("merged: Δ = %v, want %v", st.Diversity, whole.Diversity)
	}
	reduced := NewAccumulator(d)
	if err := reduced.AddSums(acc.N(), acc.SumSqNorms(), acc.Sum()); err != nil {
		t.Fatal(err)
	}
	if st, _ := reduced.Stats(); !near(st.BatchBound, whole.BatchBound, tolExact) {
		t.Errorf("AddSums: B_S = %v, want %v", st.BatchBound, whole.BatchBound)
	}

	// A failed Add leaves the accumulator unchanged.
	before := acc.SumSqNorms()
	bad := append([]float64(nil), flat[:2*d]...)
	bad[d+5] = math.Inf(-1)
	if err := acc.Add(bad, 2); !errors.Is(err, ErrNonFinite) || !strings.Contains(err.Error(), "row 1, column 5") {
		t.Errorf("bad chunk: err = %v", err)
	}
	if acc.SumSqNorms() != before || acc.N() != n {
		t.Errorf("failed Add changed the accumulator")
	}
	if err := acc.AddSums(1, math.NaN(), make([]float64, d)); !errors.Is(err, ErrNonFinite) {
		t.Errorf("AddSums NaN: %v", err)
	}

	acc.Reset()
	if _, err := acc.Stats(); !errors.Is(err, ErrEmpty) {
		t.Errorf("after Reset: err = %v, want ErrEmpty", err)
	}
}

// FuzzStats checks that ComputeStats never panics on arbitrary shapes and
// values, never returns a NaN, and agrees with the pairwise oracle.
func FuzzStats(f *testing.F) {
	f.Add([]byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16}, uint8(2))
	f.Add([]byte{0, 0, 0, 0, 0, 0, 0xc0, 0x7f, 0, 0, 0x80, 0x3f, 0, 0, 0, 0}, uint8(1)) // NaN, 1.0
	f.Add([]byte{0, 0, 0x80, 0x7f, 0, 0, 0x80, 0xff}, uint8(1))                         // +Inf, -Inf
	f.Add([]byte{0, 0, 0x80, 0x3f, 0, 0, 0x80, 0xbf}, uint8(1))                         // 1, -1: cancel
	f.Add([]byte{}, uint8(3))
	f.Fuzz(func(t *testing.T, data []byte, dRaw uint8) {
		d := int(dRaw%16) + 1
		vals := make([]float32, len(data)/4)
		for i := range vals {
			vals[i] = math.Float32frombits(uint32(data[4*i]) | uint32(data[4*i+1])<<8 | uint32(data[4*i+2])<<16 | uint32(data[4*i+3])<<24)
		}
		n := len(vals) / d
		vals = vals[:n*d]
		st, err := ComputeStats32(vals, n, d)
		if err != nil {
			for _, sentinel := range []error{ErrEmpty, ErrNonFinite, ErrAllZero} {
				if errors.Is(err, sentinel) {
					return
				}
			}
			t.Fatalf("unexpected error kind: %v", err)
		}
		if math.IsNaN(st.Diversity) || math.IsNaN(st.BatchBound) || st.BatchBound < 1-1e-9 {
			t.Fatalf("bad result %+v", st)
		}
		rows := make([][]float64, n)
		var absScale float64
		for i := range rows {
			rows[i] = make([]float64, d)
			for j := range rows[i] {
				rows[i][j] = float64(vals[i*d+j])
				absScale += math.Abs(rows[i][j])
			}
		}
		sumSq, sqSum := naiveStats(rows)
		if !near(st.SumSqNorms, sumSq, 1e-9) {
			t.Fatalf("Σ‖g‖² = %v, oracle %v", st.SumSqNorms, sumSq)
		}
		// ‖Σg‖² may cancel: compare on the scale of (Σ|g|)².
		if math.Abs(st.SqNormOfSum-sqSum) > 1e-9*absScale*absScale {
			t.Fatalf("‖Σg‖² = %v, oracle %v", st.SqNormOfSum, sqSum)
		}
	})
}
