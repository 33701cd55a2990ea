package gdiv

import (
	"errors"
	"math"
	"math/rand/v2"
	"testing"

	"gonum.org/v1/gonum/floats/scalar"
)

// Tests of the helpers that framework integrations (python/gdiv/torch) use
// when per-example gradients are not materialized: sums from scalars
// reduced on a device, and Langevin noise added once to the batch gradient.

const (
	tsTolExact = 1e-13 // the same arithmetic in another order, relative
	tsTolSigma = 4.0   // Monte Carlo means, in standard errors
)

func tsNear(a, b, tol float64) bool { return scalar.EqualWithinAbsOrRel(a, b, tol, tol) }

func TestBatchSumsFromScalarsMatchesVectors(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 1))
	const b, d = 9, 13
	sqNorms := make([]float64, b)
	for i := range sqNorms {
		sqNorms[i] = rng.ExpFloat64()
	}
	grad := mechRand(rng, 1, d, 0.3)
	var sumSqNorms, sqGrad float64
	for _, v := range sqNorms {
		sumSqNorms += v
	}
	for _, v := range grad {
		sqGrad += v * v
	}
	for _, mean := range []bool{false, true} {
		wantS, wantT, err := BatchSumsFromNorms(sqNorms, grad, mean)
		if err != nil {
			t.Fatal(err)
		}
		// A power-of-two loss scale s: the measured values are s² and s
		// times too large, and dividing them out is exact.
		// The batch gradient may already be unscaled (scale 1) while the
		// per-example norms are not.
		for _, s := range []float64{1, 1024, 1.0 / 64} {
			for _, t2 := range []float64{1, s} {
				gotS, gotT, err := BatchSumsFromScalars(b, sumSqNorms*s*s, sqGrad*t2*t2, mean, s, t2)
				if err != nil {
					t.Fatalf("mean=%v s=%v: %v", mean, s, err)
				}
				if !tsNear(gotS, wantS, tsTolExact) || !tsNear(gotT, wantT, tsTolExact) {
					t.Errorf("mean=%v s=%v t=%v: sums (%v, %v), want (%v, %v)", mean, s, t2, gotS, gotT, wantS, wantT)
				}
			}
		}
	}
	// The mean form is b² times the sum form.
	_, tSum, _ := BatchSumsFromScalars(b, 1, 2, false, 1, 1)
	_, tMean, _ := BatchSumsFromScalars(b, 1, 2, true, 1, 1)
	if tMean != b*b*tSum {
		t.Errorf("mean form %v, want b²·%v", tMean, tSum)
	}
}

func TestBatchSumsFromScalarsErrors(t *testing.T) {
	inf, nan := math.Inf(1), math.NaN()
	for _, c := range []struct {
		name       string
		b          int
		s, g       float64
		mean       bool
		sNorm, sGr float64 // the two scales
		want       error
	}{
		{"empty batch", 0, 1, 1, false, 1, 1, ErrEmpty},
		{"NaN norms", 4, nan, 1, false, 1, 1, ErrNonFinite},
		{"inf grad (AMP overflow)", 4, 1, inf, true, 65536, 65536, ErrNonFinite},
		{"negative norms", 4, -1, 1, false, 1, 1, ErrParam},
		{"negative grad", 4, 1, -1e-3, false, 1, 1, ErrParam},
		{"zero norms scale", 4, 1, 1, false, 0, 1, ErrParam},
		{"zero gradient scale", 4, 1, 1, false, 1, 0, ErrParam},
		{"negative scale", 4, 1, 1, false, -2, -2, ErrParam},
		{"infinite scale", 4, 1, 1, false, inf, 1, ErrParam},
		{"NaN scale", 4, 1, 1, false, 1, nan, ErrParam},
		{"overflow b²·‖ḡ‖²", 1 << 20, 1, math.MaxFloat64 / 4, true, 1, 1, ErrOverflow},
		{"overflow after unscaling", 4, 1, math.MaxFloat64 / 2, false, 1, 1.0 / 1024, ErrOverflow},
	} {
		if _, _, err := BatchSumsFromScalars(c.b, c.s, c.g, c.mean, c.sNorm, c.sGr); !errors.Is(err, c.want) {
			t.Errorf("%s: err = %v, want %v", c.name, err, c.want)
		}
	}
	// A zero batch gradient is valid: no signal.
	if _, tt, err := BatchSumsFromScalars(3, 1, 0, true, 1, 1); err != nil || tt != 0 {
		t.Errorf("zero gradient: %v, %v", tt, err)
	}
}

func TestLangevinSumNoiseStd(t *testing.T) {
	m := Langevin{Std: 0.7}
	for _, b := range []int{1, 4, 25} {
		if got, want := m.SumNoiseStd(b, false), 0.7*math.Sqrt(float64(b)); !tsNear(got, want, tsTolExact) {
			t.Errorf("b=%d sum: %v, want %v", b, got, want)
		}
		if got, want := m.SumNoiseStd(b, true), 0.7/math.Sqrt(float64(b)); !tsNear(got, want, tsTolExact) {
			t.Errorf("b=%d mean: %v, want %v", b, got, want)
		}
	}
	if (Langevin{}).SumNoiseStd(3, false) != 0 {
		t.Error("std 0: want 0")
	}
	mechPanics(t, "b = 0", func() { m.SumNoiseStd(0, false) })
}

// The summed per-example draws of Apply have the variance SumNoiseStd²: the
// one-Gaussian shortcut has the distribution of the per-example noise.
func TestLangevinSumNoiseStdMatchesPerExampleDraws(t *testing.T) {
	const b, d, reps = 6, 50, 400
	m := Langevin{Std: 1.3}
	rng := rand.New(rand.NewPCG(11, 2))
	rows := make([]float64, b*d)
	for _, mean := range []bool{false, true} {
		var sum2 float64 // Σ over coordinates and repetitions of (batch noise)²
		k := 0
		for range reps {
			clear(rows)
			if err := m.Apply(rows, b, d, rng); err != nil {
				t.Fatal(err)
			}
			for j := range d {
				var s float64
				for i := range b {
					s += rows[i*d+j]
				}
				if mean {
					s /= b
				}
				sum2 += s * s
				k++
			}
		}
		want := m.SumNoiseStd(b, mean)
		want *= want
		got := sum2 / float64(k)
		// The sample variance of k squared Gaussians has standard error
		// σ²·√(2/k).
		se := want * math.Sqrt(2/float64(k))
		if math.Abs(got-want) > tsTolSigma*se {
			t.Errorf("mean=%v: variance %v, want %v ± %v", mean, got, want, tsTolSigma*se)
		}
	}
}

func TestLangevinExpectedSumSqNorms(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	const b, d = 5, 8
	g := mechRand(rng, b, d, 0.5)
	m := Langevin{Std: 0.4}
	var clean, moments float64
	for i := range b {
		row := g[i*d : (i+1)*d]
		clean += sqNorm(row)
		moments += m.SecondMoment(row)
	}
	if got := m.ExpectedSumSqNorms(clean, b, d); !tsNear(got, moments, tsTolExact) {
		t.Errorf("ExpectedSumSqNorms = %v, want Σ SecondMoment = %v", got, moments)
	}
	if got := (Langevin{}).ExpectedSumSqNorms(clean, b, d); got != clean {
		t.Errorf("std 0: %v, want %v", got, clean)
	}
	mechPanics(t, "b = 0", func() { m.ExpectedSumSqNorms(1, 0, 3) })
	mechPanics(t, "d < 0", func() { m.ExpectedSumSqNorms(1, 2, -1) })
}

// Norms mode, end to end: the noise added once to the batch sum
// (SumNoiseStd) with ExpectedSumSqNorms gives M̂² shifted by exactly d·σ²
// and an unbiased Ĝ — the same expectations as per-example noise (Apply on
// each row, then EstimateBatch).
func TestLangevinNormsModeEstimate(t *testing.T) {
	const b, d, reps = 8, 20, 4000
	rng := rand.New(rand.NewPCG(5, 6))
	g := mechRand(rng, b, d, 0.4)
	m := Langevin{Std: 0.5}
	sum := make([]float64, d)
	var clean float64
	for i := range b {
		clean += sqNorm(g[i*d : (i+1)*d])
		for j := range d {
			sum[j] += g[i*d+j]
		}
	}
	base, err := EstimateBatch(b, clean, sqNorm(sum))
	if err != nil {
		t.Fatal(err)
	}
	noisy := make([]float64, d)
	rows := make([]float64, b*d)
	var gOnce, gOnce2, gPer, gPer2, m2Per, m2Per2 float64
	for range reps {
		std := m.SumNoiseStd(b, false)
		for j := range d {
			noisy[j] = sum[j] + std*rng.NormFloat64()
		}
		e, err := EstimateBatch(b, m.ExpectedSumSqNorms(clean, b, d), sqNorm(noisy))
		if err != nil {
			t.Fatal(err)
		}
		if !tsNear(e.M2, base.M2+float64(d)*m.Std*m.Std, tsTolExact) {
			t.Fatalf("M̂² = %v, want %v + d·σ²", e.M2, base.M2)
		}
		gOnce += e.G
		gOnce2 += e.G * e.G

		copy(rows, g)
		if err := m.Apply(rows, b, d, rng); err != nil {
			t.Fatal(err)
		}
		p, err := EstimateFromGrads(rows, b, d)
		if err != nil {
			t.Fatal(err)
		}
		gPer += p.G
		gPer2 += p.G * p.G
		m2Per += p.M2
		m2Per2 += p.M2 * p.M2
	}
	mean := func(s, s2 float64) (float64, float64) {
		mu := s / reps
		return mu, math.Sqrt((s2/reps - mu*mu) / reps)
	}
	for _, c := range []struct {
		name        string
		s, s2, want float64
	}{
		{"Ĝ, noise once", gOnce, gOnce2, base.G},
		{"Ĝ, per-example noise", gPer, gPer2, base.G},
		{"M̂², per-example noise", m2Per, m2Per2, base.M2 + float64(d)*m.Std*m.Std},
	} {
		mu, se := mean(c.s, c.s2)
		if math.Abs(mu-c.want) > tsTolSigma*se {
			t.Errorf("%s: mean %v, want %v ± %v", c.name, mu, c.want, tsTolSigma*se)
		}
	}
}
