package train

import (
	"math"
	"slices"
	"testing"

	"github.com/gdiv/gdiv/gdiv"

	"gonum.org/v1/gonum/floats/scalar"
	"gonum.org/v1/gonum/mat"
)

// sgdLSQ is a least-squares problem without intercept, written out by hand
// (independent of the package's LeastSquares):
//
//	f_i(w) = ½(x_iᵀw − y_i)²,   ∇f_i(w) = (x_iᵀw − y_i)·x_i.
type sgdLSQ struct {
	x    []float64 // n×d row-major
	y    []float64
	n, d int
}

func (q sgdLSQ) problem() ProblemFunc {
	return ProblemFunc{Params: q.d, Examples: q.n, Func: func(grad, w []float64, i int) float64 {
		xi := q.x[i*q.d : (i+1)*q.d]
		r := -q.y[i]
		for j, v := range xi {
			r += v * w[j]
		}
		if grad != nil {
			for j, v := range xi {
				grad[j] = r * v
			}
		}
		return 0.5 * r * r
	}}
}

// optimum solves the normal equations XᵀX w* = Xᵀy, the minimizer of F.
func (q sgdLSQ) optimum(t *testing.T) []float64 {
	t.Helper()
	X := mat.NewDense(q.n, q.d, q.x)
	var xtx mat.Dense
	xtx.Mul(X.T(), X)
	var xty mat.VecDense
	xty.MulVec(X.T(), mat.NewVecDense(q.n, q.y))
	var w mat.VecDense
	if err := w.SolveVec(&xtx, &xty); err != nil {
		t.Fatalf("normal equations: %v", err)
	}
	return w.RawVector().Data
}

// lemmaMoments returns, at w, the per-example gradients g_i and
// M²(w) = (1/n)Σ‖g_i‖², G(w) = ‖∇F(w)‖² and ∇F(w), all by plain loops.
func lemmaMoments(p Problem, w []float64) (m2, g float64, gradF []float64) {
	n, d := p.NumExamples(), p.NumParams()
	gradF = make([]float64, d)
	gi := make([]float64, d)
	for i := range n {
		p.LossGrad(gi, w, i)
		for j, v := range gi {
			m2 += v * v
			gradF[j] += v
		}
	}
	m2 /= float64(n)
	for j := range gradF {
		gradF[j] /= float64(n)
		g += gradF[j] * gradF[j]
	}
	return m2, g, gradF
}

func sgdSqDist(a, b []float64) float64 {
	var s float64
	for j := range a {
		s += (a[j] - b[j]) * (a[j] - b[j])
	}
	return s
}

func sgdDot(a, b []float64) float64 {
	var s float64
	for j := range a {
		s += a[j] * b[j]
	}
	return s
}

// sgdForEachBatch calls f with every one of the n^b ordered batches drawn
// with replacement from [0, n).
func sgdForEachBatch(n, b int, f func(idx []int)) {
	idx := make([]int, b)
	var rec func(pos int)
	rec = func(pos int) {
		if pos == b {
			f(idx)
			return
		}
		for i := range n {
			idx[pos] = i
			rec(pos + 1)
		}
	}
	rec(0)
}

var lemmaProblem = sgdLSQ{
	x: []float64{
		1.0, 2.0,
		3.0, -1.0,
		-2.0, 1.5,
	},
	y: []float64{1, 2, -0.5},
	n: 3, d: 2,
}

// TestLemma1Exact checks eq. (15) of the proof of Lemma 1 by enumerating
// all n^B equally likely ordered batches drawn with replacement: for the
// sum-step w' = w − γ Σ_{l∈batch} ∇f_l(w),
//
//	E‖w' − w*‖² = ‖w − w*‖² − 2γB⟨∇F(w), w − w*⟩ + γ²(B·M²(w) + B(B−1)·G(w))
//	            = ‖w − w*‖² − 2γB⟨∇F(w), w − w*⟩ + γ²B(1 + δ)M²(w),  δ = (B−1)/B_S(w),
//
// exactly; the mean-step is the same identity with γ/B in place of γ.
func TestLemma1Exact(t *testing.T) {
	const tol = 1e-12
	p := lemmaProblem.problem()
	wstar := lemmaProblem.optimum(t)
	// w* is a critical point: ∇F(w*) = 0.
	if _, g, _ := lemmaMoments(p, wstar); g > 1e-24 {
		t.Fatalf("‖∇F(w*)‖² = %v, want 0", g)
	}
	w := []float64{0.3, -0.7}
	m2, g, gradF := lemmaMoments(p, w)
	bs := m2 / g // B_S(w) = M²/G
	d0 := sgdSqDist(w, wstar)
	wminus := make([]float64, len(w))
	for j := range w {
		wminus[j] = w[j] - wstar[j]
	}
	inner := sgdDot(gradF, wminus)

	for _, rule := range []StepRule{SumStep, MeanStep} {
		for _, B := range []int{1, 2, 3} {
			const lr = 0.05
			gamma := lr
			if rule == MeanStep {
				gamma = lr / float64(B)
			}
			bf := float64(B)
			var mean float64
			count := 0
			dst := make([]float64, len(w))
			sgdForEachBatch(lemmaProblem.n, B, func(idx []int) {
				if err := SGDStep(dst, w, p, idx, lr, rule, 0); err != nil {
					t.Fatal(err)
				}
				mean += sgdSqDist(dst, wstar)
				count++
			})
			mean /= float64(count)
			want := d0 - 2*gamma*bf*inner + gamma*gamma*(bf*m2+bf*(bf-1)*g)
			delta := (bf - 1) / bs
			want2 := d0 - 2*gamma*bf*inner + gamma*gamma*bf*(1+delta)*m2
			if !scalar.EqualWithinAbsOrRel(mean, want, tol, tol) || !scalar.EqualWithinAbsOrRel(mean, want2, tol, tol) {
				t.Errorf("%v step, B = %d: E‖w' − w*‖² = %.17g, eq. (15) gives %.17g and %.17g", rule, B, mean, want, want2)
			}
		}
	}
}

// TestLemma1Projected checks that with the projection onto a ball that
// contains w* (non-expansive), eq. (15) becomes an inequality, and that the
// projection is actually active for some batches (so the test can fail).
func TestLemma1Projected(t *testing.T) {
	p := lemmaProblem.problem()
	wstar := lemmaProblem.optimum(t)
	radius := math.Sqrt(sgdDot(wstar, wstar)) * 1.05
	w := []float64{0.2, -0.4}
	if sgdDot(w, w) > radius*radius {
		t.Fatalf("w outside the ball")
	}
	m2, g, gradF := lemmaMoments(p, w)
	d0 := sgdSqDist(w, wstar)
	inner := sgdDot(gradF, []float64{w[0] - wstar[0], w[1] - wstar[1]})
	const lr = 0.08
	for _, B := range []int{2, 3} {
		bf := float64(B)
		var projMean, freeMean float64
		projected := 0
		count := 0
		dst := make([]float64, 2)
		free := make([]float64, 2)
		sgdForEachBatch(lemmaProblem.n, B, func(idx []int) {
			if err := SGDStep(dst, w, p, idx, lr, SumStep, radius); err != nil {
				t.Fatal(err)
			}
			if err := SGDStep(free, w, p, idx, lr, SumStep, 0); err != nil {
				t.Fatal(err)
			}
			if n := math.Sqrt(sgdDot(dst, dst)); n > radius*(1+1e-12) {
				t.Fatalf("batch %v: ‖w'‖ = %v > radius %v", idx, n, radius)
			}
			if fn := math.Sqrt(sgdDot(free, free)); fn > radius {
				// Π(v) = v·R/‖v‖ outside the ball.
				projected++
				for j := range dst {
					if want := free[j] * radius / fn; !scalar.EqualWithinAbsOrRel(dst[j], want, 1e-14, 1e-14) {
						t.Fatalf("batch %v: projected %v, want %v·R/‖·‖", idx, dst, free)
					}
				}
			} else if !slices.Equal(dst, free) {
				t.Fatalf("batch %v: projected %v inside the ball, want %v unchanged", idx, dst, free)
			}
			projMean += sgdSqDist(dst, wstar)
			freeMean += sgdSqDist(free, wstar)
			count++
		})
		projMean /= float64(count)
		freeMean /= float64(count)
		want := d0 - 2*lr*bf*inner + lr*lr*(bf*m2+bf*(bf-1)*g)
		if projected == 0 {
			t.Fatalf("B = %d: the projection was never active; choose a smaller radius", B)
		}
		if !scalar.EqualWithinAbsOrRel(freeMean, want, 1e-12, 1e-12) {
			t.Errorf("B = %d: unprojected mean %.17g, eq. (15) %.17g", B, freeMean, want)
		}
		if !(projMean < want) {
			t.Errorf("B = %d: projected E‖w' − w*‖² = %.17g, want < eq. (15) = %.17g (%d of %d batches projected)",
				B, projMean, want, projected, count)
		}
	}
}

// TestLemma1Estimator checks, by the same enumeration, the identity behind
// eq. (15) that makes the trainer's per-batch estimate unbiased:
// E‖ḡ‖² = G + (M² − G)/B, so E[M̂²] = M² and E[Ĝ] = G exactly.
func TestLemma1Estimator(t *testing.T) {
	p := lemmaProblem.problem()
	w := []float64{0.3, -0.7}
	m2, g, _ := lemmaMoments(p, w)
	grads, _ := PerExampleGrads(nil, p, w, nil)
	d := p.NumParams()
	for _, B := range []int{2, 3, 4} {
		var em2, eg float64
		count := 0
		batch := make([]float64, B*d)
		sgdForEachBatch(lemmaProblem.n, B, func(idx []int) {
			for k, i := range idx {
				copy(batch[k*d:(k+1)*d], grads[i*d:(i+1)*d])
			}
			e, err := gdiv.EstimateFromGrads(batch, B, d)
			if err != nil {
				t.Fatal(err)
			}
			em2 += e.M2
			eg += e.G
			count++
		})
		em2 /= float64(count)
		eg /= float64(count)
		if !scalar.EqualWithinAbsOrRel(em2, m2, 1e-12, 1e-12) || !scalar.EqualWithinAbsOrRel(eg, g, 1e-12, 1e-12) {
			t.Errorf("B = %d: E[M̂²] = %v, E[Ĝ] = %v; want M² = %v, G = %v", B, em2, eg, m2, g)
		}
	}
}
