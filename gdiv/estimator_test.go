package gdiv

import (
	"errors"
	"math"
	"math/rand/v2"
	"strings"
	"testing"
)

// batchSums returns Σ‖g_i‖² and ‖Σ g_i‖² over the rows idx of data.
func batchSums(data [][]float64, idx []int) (sumSq, sqSum float64) {
	sum := make([]float64, len(data[0]))
	for _, i := range idx {
		for k, v := range data[i] {
			sumSq += v * v
			sum[k] += v
		}
	}
	for _, v := range sum {
		sqSum += v * v
	}
	return sumSq, sqSum
}

// forEachTuple calls f with every ordered b-tuple of [0, n) (n^b of them):
// all batches drawn with replacement, each of probability n^-b.
func forEachTuple(n, b int, f func(idx []int)) {
	idx := make([]int, b)
	for {
		f(idx)
		k := b - 1
		for k >= 0 && idx[k] == n-1 {
			idx[k] = 0
			k--
		}
		if k < 0 {
			return
		}
		idx[k]++
	}
}

// forEachSubset calls f with every b-subset of [0, n): all batches drawn
// without replacement, each equally likely.
func forEachSubset(n, b int, f func(idx []int)) {
	idx := make([]int, b)
	var rec func(pos, start int)
	rec = func(pos, start int) {
		if pos == b {
			f(idx)
			return
		}
		for i := start; i <= n-(b-pos); i++ {
			idx[pos] = i
			rec(pos+1, i+1)
		}
	}
	rec(0, 0)
}

// population returns the exact M² and G of a small data set.
func population(t *testing.T, data [][]float64) (m2, g float64) {
	st := mustStats(t, data)
	return st.M2, st.G
}

func TestEstimateBatchUnbiasedByEnumeration(t *testing.T) {
	rng := rand.New(rand.NewPCG(21, 22))
	data := randRows(rng, 4, 3)
	for i := range data { // a common direction so that G is not tiny
		data[i][0] += 1.5
	}
	m2, g := population(t, data)
	for _, b := range []int{2, 3, 4} {
		var sumM2, sumG, count float64
		forEachTuple(len(data), b, func(idx []int) {
			sq, ss := batchSums(data, idx)
			e, err := EstimateBatch(b, sq, ss)
			if err != nil {
				t.Fatal(err)
			}
			sumM2 += e.M2
			sumG += e.G
			count++
		})
		if !near(sumM2/count, m2, tolExact) || !near(sumG/count, g, tolExact) {
			t.Errorf("b=%d: E[M̂²] = %v (M² = %v), E[Ĝ] = %v (G = %v)", b, sumM2/count, m2, sumG/count, g)
		}
	}
}

func TestEstimateBatchFiniteUnbiasedByEnumeration(t *testing.T) {
	rng := rand.New(rand.NewPCG(23, 24))
	data := randRows(rng, 6, 2)
	for i := range data {
		data[i][1] -= 0.7
	}
	m2, g := population(t, data)
	n := len(data)
	for b := 2; b <= n; b++ {
		var sumM2, sumG, sumGRepl, count float64
		forEachSubset(n, b, func(idx []int) {
			sq, ss := batchSums(data, idx)
			e, err := EstimateBatchFinite(b, n, sq, ss)
			if err != nil {
				t.Fatal(err)
			}
			r, _ := EstimateBatch(b, sq, ss)
			sumM2 += e.M2
			sumG += e.G
			sumGRepl += r.G
			count++
		})
		if !near(sumM2/count, m2, tolExact) || !near(sumG/count, g, tolExact) {
			t.Errorf("b=%d: E[M̂²] = %v (M² = %v), E[Ĝ] = %v (G = %v)", b, sumM2/count, m2, sumG/count, g)
		}
		// The with-replacement formula is biased under this sampling, so the
		// distinction matters: its mean misses G by a visible margin.
		if near(sumGRepl/count, g, 1e-6) {
			t.Errorf("b=%d: the with-replacement Ĝ is unexpectedly unbiased without replacement", b)
		}
	}
	// b = n: the whole data set, Ĝ is exactly G.
	sq, ss := batchSums(data, []int{0, 1, 2, 3, 4, 5})
	if e, _ := EstimateBatchFinite(n, n, sq, ss); !near(e.G, g, tolExact) {
		t.Errorf("b = n: Ĝ = %v, want G = %v", e.G, g)
	}
}

func TestEstimateTwoScaleUnbiasedByEnumeration(t *testing.T) {
	rng := rand.New(rand.NewPCG(25, 26))
	data := randRows(rng, 3, 2)
	for i := range data {
		data[i][0] += 1
	}
	m2, g := population(t, data)
	// P = 2 ranks × bSmall = 2 examples: all 3^4 ordered global batches.
	const ranks, bSmall = 2, 2
	bBig := ranks * bSmall
	var sumM2, sumG, count float64
	forEachTuple(len(data), bBig, func(idx []int) {
		var small float64
		for r := range ranks {
			_, ss := batchSums(data, idx[r*bSmall:(r+1)*bSmall])
			small += ss / float64(bSmall*bSmall) / ranks // ‖local mean‖², averaged over ranks
		}
		_, ssBig := batchSums(data, idx)
		e, err := EstimateTwoScale(bSmall, small, bBig, ssBig/float64(bBig*bBig))
		if err != nil {
			t.Fatal(err)
		}
		sumM2 += e.M2
		sumG += e.G
		count++
	})
	if !near(sumM2/count, m2, tolExact) || !near(sumG/count, g, tolExact) {
		t.Errorf("two-scale: E[M̂²] = %v (M² = %v), E[Ĝ] = %v (G = %v)", sumM2/count, m2, sumG/count, g)
	}
}

func TestEstimateTwoScaleWithUnitSmallBatchIsPerExample(t *testing.T) {
	rng := rand.New(rand.NewPCG(27, 28))
	rows := randRows(rng, 8, 5)
	idx := []int{0, 1, 2, 3, 4, 5, 6, 7}
	sq, ss := batchSums(rows, idx)
	b := len(idx)
	want, _ := EstimateBatch(b, sq, ss)
	got, err := EstimateTwoScale(1, sq/float64(b), b, ss/float64(b*b))
	if err != nil || !near(got.M2, want.M2, tolExact) || !near(got.G, want.G, tolExact) || !near(got.BatchBound, want.BatchBound, 1e-10) {
		t.Errorf("two-scale(1, b) = %+v, %v; per-example = %+v", got, err, want)
	}
	fromGrads, err := EstimateFromGrads(flatten(rows), b, 5)
	if err != nil || !near(fromGrads.G, want.G, tolExact) {
		t.Errorf("EstimateFromGrads = %+v, %v", fromGrads, err)
	}
	fromGrads32, err := EstimateFromGrads32(toF32(flatten(rows)), b, 5)
	if err != nil || !near(fromGrads32.M2, want.M2, 1e-6) {
		t.Errorf("EstimateFromGrads32 = %+v, %v", fromGrads32, err)
	}
}

func TestEstimateNoSignal(t *testing.T) {
	// (1,0) and (−1,0): M̂² = 1, ‖ḡ‖² = 0, Ĝ = (2·0 − 1)/1 = −1.
	e, err := EstimateFromGrads([]float64{1, 0, -1, 0}, 2, 2)
	if err != nil {
		t.Fatal(err)
	}
	if !e.NoSignal || e.G != -1 || !math.IsInf(e.BatchBound, 1) || !math.IsInf(e.NoiseScale, 1) {
		t.Errorf("cancelling batch: %+v, want NoSignal, G = -1, infinite bound", e)
	}
	// Ĝ exactly 0 is also "no signal": (1,0),(0,1),(−1,0)... use b=2, ‖ḡ‖² = M̂²/2.
	e, _ = EstimateBatch(2, 2, 2) // M̂² = 1, ‖ḡ‖² = 0.5 → Ĝ = 0
	if !e.NoSignal || e.G != 0 {
		t.Errorf("Ĝ = 0: %+v", e)
	}
}

func TestEstimateErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  error
		want error
	}{
		{"b=1", func() error { _, err := EstimateBatch(1, 1, 1); return err }(), ErrTooFew},
		{"b=0", func() error { _, err := EstimateBatchFinite(0, 5, 1, 1); return err }(), ErrTooFew},
		{"b>n", func() error { _, err := EstimateBatchFinite(6, 5, 1, 1); return err }(), ErrParam},
		{"nan", func() error { _, err := EstimateBatch(4, math.NaN(), 1); return err }(), ErrNonFinite},
		{"negative", func() error { _, err := EstimateBatch(4, -1, 1); return err }(), ErrParam},
		{"two-scale order", func() error { _, err := EstimateTwoScale(4, 1, 4, 1); return err }(), ErrParam},
		{"two-scale zero", func() error { _, err := EstimateTwoScale(0, 1, 4, 1); return err }(), ErrParam},
		{"two-scale inf", func() error { _, err := EstimateTwoScale(1, math.Inf(1), 4, 1); return err }(), ErrNonFinite},
		{"grads b=1", func() error { _, err := EstimateFromGrads([]float64{1, 2}, 1, 2); return err }(), ErrTooFew},
		{"grads NaN", func() error { _, err := EstimateFromGrads([]float64{1, math.NaN()}, 2, 1); return err }(), ErrNonFinite},
	} {
		if !errors.Is(tc.err, tc.want) {
			t.Errorf("%s: err = %v, want %v", tc.name, tc.err, tc.want)
		}
	}
}

func TestEstimatorRatioOfEMAs(t *testing.T) {
	ests := []Estimate{newEstimate(4, 2, 1), newEstimate(4, 3, 0.1), newEstimate(4, 1, 0.5)}
	e := Estimator{Beta: 0.5}
	var got Estimate
	for _, x := range ests {
		var err error
		if got, err = e.Update(x); err != nil {
			t.Fatal(err)
		}
	}
	// By hand: EMA_M2 = 0.5³·0 + 0.5²·0.5·2 + 0.5·0.5·3 + 0.5·1 = 0.25+0.75+0.5 = 1.5,
	// EMA_G = 0.125 + 0.025 + 0.25 = 0.4, weight = 1 − 0.5³ = 0.875.
	wantM2, wantG := 1.5/0.875, 0.4/0.875
	if !near(got.M2, wantM2, tolExact) || !near(got.G, wantG, tolExact) || !near(got.BatchBound, 1.5/0.4, tolExact) {
		t.Errorf("smoothed %+v, want M2 %v G %v B %v", got, wantM2, wantG, 1.5/0.4)
	}
	// An EMA of the ratios (2, 30, 2) would give a very different answer.
	emaOfRatios := (0.25*2 + 0.5*30/2 + 0.5*2) / 0.875
	if near(got.BatchBound, emaOfRatios, 0.1) {
		t.Errorf("ratio of EMAs %v equals the EMA of ratios %v", got.BatchBound, emaOfRatios)
	}
	// Debiasing: a constant input is reproduced exactly from the first step.
	c := Estimator{Beta: 0.99}
	for range 3 {
		s, _ := c.Update(newEstimate(8, 5, 2))
		if !near(s.M2, 5, tolExact) || !near(s.G, 2, tolExact) {
			t.Errorf("constant input: smoothed %+v", s)
		}
	}
	// Beta = 0: the latest batch.
	var z Estimator
	z.Update(newEstimate(2, 9, 3))
	if s := z.Smoothed(); s.M2 != 9 || s.G != 3 {
		t.Errorf("beta 0: %+v", s)
	}
	// Before any update: no signal.
	var empty Estimator
	if s := empty.Smoothed(); !s.NoSignal || !math.IsInf(s.BatchBound, 1) {
		t.Errorf("empty estimator: %+v", s)
	}
}

func TestEstimatorConvergesToPopulationBound(t *testing.T) {
	rng := rand.New(rand.NewPCG(31, 32))
	const n, d, b = 200, 10, 16
	data := randRows(rng, n, d)
	for i := range data {
		for j := range data[i] {
			data[i][j] += 0.4 // signal along (1,…,1)
		}
	}
	want := mustStats(t, data).BatchBound
	est := Estimator{Beta: 0.999}
	idx := make([]int, b)
	for range 20000 {
		for k := range idx {
			idx[k] = rng.IntN(n)
		}
		sq, ss := batchSums(data, idx)
		e, err := EstimateBatch(b, sq, ss)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = est.Update(e)
	}
	got := est.Smoothed().BatchBound
	if math.Abs(got-want)/want > 0.05 {
		t.Errorf("smoothed B̂_S = %v after 20000 batches, population B_S = %v", got, want)
	}
}

func TestEstimatorStateRoundTrip(t *testing.T) {
	rng := rand.New(rand.NewPCG(33, 34))
	batches := make([]Estimate, 12)
	for i := range batches {
		batches[i] = newEstimate(4, 1+rng.Float64(), rng.Float64()-0.2)
	}
	full := Estimator{Beta: 0.9}
	var resumed Estimator
	for i, x := range batches {
		_, _ = full.Update(x)
		if i == 5 {
			first := Estimator{Beta: 0.9}
			for _, y := range batches[:6] {
				_, _ = first.Update(y)
			}
			if err := resumed.SetState(first.State()); err != nil {
				t.Fatal(err)
			}
		}
		if i > 5 {
			_, _ = resumed.Update(x)
		}
	}
	if full.Smoothed() != resumed.Smoothed() || full.State() != resumed.State() {
		t.Errorf("resumed %+v, uninterrupted %+v", resumed.State(), full.State())
	}
	// A rejected update changes nothing.
	before := full.State()
	if _, err := full.Update(Estimate{M2: math.NaN()}); !errors.Is(err, ErrNonFinite) || full.State() != before {
		t.Errorf("NaN update: err %v, state changed %v", err, full.State() != before)
	}
	for _, c := range []struct {
		bad   EstimatorState
		field string
	}{
		{EstimatorState{Beta: 1}, "beta"},
		{EstimatorState{Beta: 0.5, Steps: -1}, "steps"},
		{EstimatorState{Beta: 0.5, Steps: 2, Weight: 0}, "weight"},
		{EstimatorState{Beta: 0.5, Steps: 1, Weight: 0.5, EMAG: math.Inf(1)}, "ema_g"},
		{EstimatorState{Beta: 0.5, Steps: 1, Weight: 0.5, EMAM2: math.NaN()}, "ema_m2"},
		{EstimatorState{Beta: 0.5, Steps: 1, Weight: 0.5, EMAM2: -5, EMAG: 1}, "ema_m2"},
	} {
		before := resumed.State()
		err := resumed.SetState(c.bad)
		var fe *FieldError
		if err == nil || !errors.As(err, &fe) || fe.Field != c.field {
			t.Errorf("SetState(%+v) = %v, want an error naming %q", c.bad, err, c.field)
		}
		if resumed.State() != before {
			t.Errorf("SetState(%+v) failed but changed the state", c.bad)
		}
	}
	// A negative M2 (a buggy caller's estimate) is refused by Update.
	if _, err := full.Update(Estimate{M2: -1, G: 1}); !errors.Is(err, ErrParam) || full.State() != before {
		t.Errorf("negative m2 update: err %v, state changed %v", err, full.State() != before)
	}
}

// Inputs that break ‖ḡ_big‖² ≤ mean_r ‖ḡ_r‖² far enough to make M̂² negative
// are refused rather than smoothed into a negative batch bound.
func TestEstimateTwoScaleInconsistent(t *testing.T) {
	if _, err := EstimateTwoScale(2, 0, 4, 1); !errors.Is(err, ErrParam) {
		t.Errorf("EstimateTwoScale(2, 0, 4, 1) = %v, want ErrParam", err)
	}
	if _, err := EstimateTwoScaleFinite(2, 0, 4, 1, 100); !errors.Is(err, ErrParam) {
		t.Errorf("EstimateTwoScaleFinite(2, 0, 4, 1, 100) = %v, want ErrParam", err)
	}
	// Equal norms (every rank the same gradient) stay valid: M̂² = ‖ḡ‖².
	e, err := EstimateTwoScale(64, 2, 128, 2)
	if err != nil || math.Abs(e.M2-2) > 1e-12 {
		t.Errorf("EstimateTwoScale(64, 2, 128, 2) = %+v, %v; want M2 = 2", e, err)
	}
}

func TestBatchSumsFromNorms(t *testing.T) {
	rng := rand.New(rand.NewPCG(41, 42))
	const b, d = 7, 2051 // d past one column block and not a multiple of 4
	rows := randRows(rng, b, d)
	st := mustStats(t, rows)
	norms := make([]float64, b)
	sum := make([]float64, d)
	for i, r := range rows {
		for j, v := range r {
			norms[i] += v * v
			sum[j] += v
		}
	}
	mean := make([]float64, d)
	for j := range sum {
		mean[j] = sum[j] / b
	}
	for _, tc := range []struct {
		name string
		grad []float64
		mean bool
	}{{"sum", sum, false}, {"mean", mean, true}} {
		sq, ss, err := BatchSumsFromNorms(norms, tc.grad, tc.mean)
		if err != nil || !near(sq, st.SumSqNorms, tolSum) || !near(ss, st.SqNormOfSum, tolSum) {
			t.Errorf("%s: (%v, %v, %v), want (%v, %v)", tc.name, sq, ss, err, st.SumSqNorms, st.SqNormOfSum)
		}
		sq32, ss32, err := BatchSumsFromNorms32(toF32(norms), toF32(tc.grad), tc.mean)
		if err != nil || !near(sq32, st.SumSqNorms, 1e-6) || !near(ss32, st.SqNormOfSum, 1e-5) {
			t.Errorf("%s float32: (%v, %v, %v)", tc.name, sq32, ss32, err)
		}
	}
	// A zero batch gradient is a valid, signal-free batch.
	if _, ss, err := BatchSumsFromNorms([]float64{1, 1}, []float64{0, 0}, false); err != nil || ss != 0 {
		t.Errorf("zero gradient: %v, %v", ss, err)
	}
	for _, tc := range []struct {
		name        string
		norms, grad []float64
		want        error
		msg         string
	}{
		{"empty", nil, []float64{1}, ErrEmpty, "sq_norms"},
		{"no dim", []float64{1}, nil, ErrZeroDim, "batch_grad"},
		{"negative", []float64{1, -2}, []float64{1}, ErrParam, "sq_norms[1]"},
		{"nan norm", []float64{math.NaN()}, []float64{1}, ErrNonFinite, "sq_norms[0]"},
		{"inf grad", []float64{1}, []float64{1, math.Inf(1)}, ErrNonFinite, "batch_grad at row 0, column 1"},
	} {
		_, _, err := BatchSumsFromNorms(tc.norms, tc.grad, false)
		if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("%s: err = %v, want %v naming %q", tc.name, err, tc.want, tc.msg)
		}
	}
}

// TestEstimateTwoScaleFiniteUnbiased enumerates every ordered draw of 4
// distinct examples out of 5 (two local batches of 2): the mean of Ĝ and M̂²
// is exactly G and M² of the population; the i.i.d. pair is biased by
// σ²/(n − 1) under this sampling.
func TestEstimateTwoScaleFiniteUnbiased(t *testing.T) {
	pop := [][2]float64{{1, 0.5}, {-0.3, 2}, {0.7, -1.1}, {2.2, 0.4}, {-1.5, -0.2}}
	n := len(pop)
	var mean [2]float64
	m2 := 0.0
	for _, g := range pop {
		mean[0] += g[0] / float64(n)
		mean[1] += g[1] / float64(n)
		m2 += (g[0]*g[0] + g[1]*g[1]) / float64(n)
	}
	wantG := mean[0]*mean[0] + mean[1]*mean[1]
	sq := func(idx ...int) float64 {
		var s [2]float64
		for _, i := range idx {
			s[0] += pop[i][0] / float64(len(idx))
			s[1] += pop[i][1] / float64(len(idx))
		}
		return s[0]*s[0] + s[1]*s[1]
	}
	var sumG, sumM2, sumIID float64
	draws := 0
	for a := 0; a < n; a++ {
		for b := 0; b < n; b++ {
			for c := 0; c < n; c++ {
				for d := 0; d < n; d++ {
					if a == b || a == c || a == d || b == c || b == d || c == d {
						continue
					}
					small := (sq(a, b) + sq(c, d)) / 2
					big := sq(a, b, c, d)
					e, err := EstimateTwoScaleFinite(2, small, 4, big, n)
					if err != nil {
						t.Fatal(err)
					}
					iid, _ := EstimateTwoScale(2, small, 4, big)
					sumG += e.G
					sumM2 += e.M2
					sumIID += iid.G
					draws++
				}
			}
		}
	}
	if draws != 120 {
		t.Fatalf("%d draws, want 120", draws)
	}
	if got := sumG / float64(draws); !near(got, wantG, 1e-12) {
		t.Errorf("E[Ĝ] = %v, want G = %v", got, wantG)
	}
	if got := sumM2 / float64(draws); !near(got, m2, 1e-12) {
		t.Errorf("E[M̂²] = %v, want M² = %v", got, m2)
	}
	if got, want := sumIID/float64(draws), wantG-(m2-wantG)/float64(n-1); !near(got, want, 1e-12) {
		t.Errorf("E[Ĝ_iid] = %v, want the biased G − σ²/(n−1) = %v", got, want)
	}
	// exact when the big batch is the whole population
	e, _ := EstimateTwoScaleFinite(2, (sq(0, 1)+sq(2, 3))/2, 5, sq(0, 1, 2, 3, 4), 5)
	if !near(e.G, wantG, 1e-12) {
		t.Errorf("b_big = n: Ĝ = %v, want %v", e.G, wantG)
	}
	if _, err := EstimateTwoScaleFinite(2, 1, 6, 1, 5); !errors.Is(err, ErrParam) {
		t.Errorf("b_big > n: %v", err)
	}
}
