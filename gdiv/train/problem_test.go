package train

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/gdiv/gdiv/gdiv"
	"github.com/gdiv/gdiv/gdiv/data"

	"gonum.org/v1/gonum/diff/fd"
	"gonum.org/v1/gonum/floats"
	"gonum.org/v1/gonum/floats/scalar"
)

// Named tolerances of the problem tests.
const (
	probTolExact = 1e-12 // hand-computed losses and gradients
	probTolFD    = 1e-6  // analytic vs. central finite differences (abs or rel)
	probTolMean  = 1e-12 // FullLoss vs. the mean of the per-example values
	probKink     = 1e-3  // ReLU pre-activations closer to 0 than this are skipped by the FD check
	probBoundTol = 1e-9  // relative slack for "B_S ≥ bound" under rounding
)

func probNear(a, b, tol float64) bool { return scalar.EqualWithinAbsOrRel(a, b, tol, tol) }

// probData returns a small random classification data set (labels 0..k−1,
// every class present) with standard normal features.
func probData(rng *rand.Rand, n, d, k int) *data.Dataset {
	ds := &data.Dataset{Name: "probdata", X: make([]float64, n*d), Y: make([]float64, n), N: n, D: d, Classes: k}
	for j := range ds.X {
		ds.X[j] = rng.NormFloat64()
	}
	for i := range ds.Y {
		ds.Y[i] = float64(i % k)
	}
	return ds
}

func probRandW(rng *rand.Rand, p int, scale float64) []float64 {
	w := make([]float64, p)
	for j := range w {
		w[j] = scale * rng.NormFloat64()
	}
	return w
}

// probCheckFD compares LossGrad's gradient at (w, i) with central finite
// differences of its loss, and the loss with and without grad.
func probCheckFD(t *testing.T, name string, p Problem, w []float64, i int) {
	t.Helper()
	np := p.NumParams()
	g := make([]float64, np)
	for j := range g {
		g[j] = math.NaN() // LossGrad must overwrite every entry
	}
	f := p.LossGrad(g, w, i)
	if f0 := p.LossGrad(nil, w, i); !probNear(f, f0, probTolExact) {
		t.Errorf("%s, example %d: loss %v with grad, %v without", name, i, f, f0)
	}
	num := fd.Gradient(nil, func(x []float64) float64 { return p.LossGrad(nil, x, i) }, w, &fd.Settings{Formula: fd.Central})
	for j := range g {
		if !probNear(g[j], num[j], probTolFD) {
			t.Errorf("%s, example %d: ∂f/∂w[%d] = %v, finite differences %v", name, i, j, g[j], num[j])
			return
		}
	}
}

type probCase struct {
	name string
	make func(ds *data.Dataset, l2 float64) (Problem, error)
	bin  bool // needs a binary data set
}

var probCases = []probCase{
	{"leastsquares", func(ds *data.Dataset, l2 float64) (Problem, error) { return NewLeastSquares(ds, l2) }, false},
	{"leastsquares-noint", func(ds *data.Dataset, l2 float64) (Problem, error) { return NewLeastSquares(ds, l2, NoIntercept()) }, false},
	{"logistic", func(ds *data.Dataset, l2 float64) (Problem, error) { return NewLogistic(ds, l2) }, true},
	{"logistic-noint", func(ds *data.Dataset, l2 float64) (Problem, error) { return NewLogistic(ds, l2, NoIntercept()) }, true},
	{"softmax", func(ds *data.Dataset, l2 float64) (Problem, error) { return NewSoftmax(ds, l2) }, false},
	{"softmax-noint", func(ds *data.Dataset, l2 float64) (Problem, error) { return NewSoftmax(ds, l2, NoIntercept()) }, false},
	{"mlp-tanh", func(ds *data.Dataset, l2 float64) (Problem, error) { return NewMLP(ds, 5, Tanh, l2) }, false},
	{"mlp-relu", func(ds *data.Dataset, l2 float64) (Problem, error) { return NewMLP(ds, 5, ReLU, l2) }, false},
	{"mlp-tanh-noint", func(ds *data.Dataset, l2 float64) (Problem, error) { return NewMLP(ds, 4, Tanh, l2, NoIntercept()) }, false},
	{"mlp-relu-noint", func(ds *data.Dataset, l2 float64) (Problem, error) { return NewMLP(ds, 4, ReLU, l2, NoIntercept()) }, false},
}

// probNearKink reports whether a ReLU MLP has a pre-activation within
// probKink of 0 at (w, example i), where finite differences are invalid.
func probNearKink(p Problem, w []float64, i int) bool {
	m, ok := p.(*MLP)
	if !ok || m.act != ReLU {
		return false
	}
	m.forward(w, m.ds.Row(i))
	for _, a := range m.a {
		if math.Abs(a) < probKink {
			return true
		}
	}
	return false
}

func TestLossGradFiniteDifferences(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 1))
	multi := probData(rng, 9, 4, 3)
	bin := probData(rng, 8, 3, 2)
	for _, c := range probCases {
		for _, l2 := range []float64{0, 0.3} {
			ds := multi
			if c.bin {
				ds = bin
			}
			p, err := c.make(ds, l2)
			if err != nil {
				t.Fatalf("%s: %v", c.name, err)
			}
			checked := 0
			for trial := range 4 {
				w := probRandW(rng, p.NumParams(), 0.3+0.7*float64(trial))
				for i := range p.NumExamples() {
					if probNearKink(p, w, i) {
						continue
					}
					probCheckFD(t, fmt.Sprintf("%s λ=%v trial %d", c.name, l2, trial), p, w, i)
					checked++
				}
			}
			if checked < 4*ds.N*3/4 {
				t.Errorf("%s λ=%v: only %d examples away from kinks", c.name, l2, checked)
			}
		}
	}
}

func TestFullLossIsMean(t *testing.T) {
	rng := rand.New(rand.NewPCG(2, 2))
	multi := probData(rng, 11, 3, 4)
	bin := probData(rng, 10, 3, 2)
	for _, c := range probCases {
		ds := multi
		if c.bin {
			ds = bin
		}
		p, err := c.make(ds, 0.1)
		if err != nil {
			t.Fatal(err)
		}
		np, n := p.NumParams(), p.NumExamples()
		w := probRandW(rng, np, 0.5)
		grads, meanLoss := PerExampleGrads(nil, p, w, nil)
		want := make([]float64, np)
		for i := range n {
			floats.Add(want, grads[i*np:(i+1)*np])
		}
		floats.Scale(1/float64(n), want)
		got := make([]float64, np)
		f := FullLoss(p, got, w)
		if !probNear(f, meanLoss, probTolMean) || !probNear(f, FullLoss(p, nil, w), probTolMean) {
			t.Errorf("%s: FullLoss %v, mean of f_i %v, without grad %v", c.name, f, meanLoss, FullLoss(p, nil, w))
		}
		for j := range got {
			if !probNear(got[j], want[j], probTolMean) {
				t.Fatalf("%s: ∇F[%d] = %v, mean of ∇f_i %v", c.name, j, got[j], want[j])
			}
		}
		if probNearKinkAny(p, w) {
			continue
		}
		num := fd.Gradient(nil, func(x []float64) float64 { return FullLoss(p, nil, x) }, w, &fd.Settings{Formula: fd.Central})
		for j := range got {
			if !probNear(got[j], num[j], probTolFD) {
				t.Fatalf("%s: ∇F[%d] = %v, finite differences %v", c.name, j, got[j], num[j])
			}
		}
	}
}

func probNearKinkAny(p Problem, w []float64) bool {
	for i := range p.NumExamples() {
		if probNearKink(p, w, i) {
			return true
		}
	}
	return false
}

// probTwo is the 2-example data set of the hand-computed cases.
func probTwo(y0, y1 float64, classes int) *data.Dataset {
	return &data.Dataset{Name: "two", X: []float64{1, 2, 3, -1}, Y: []float64{y0, y1}, N: 2, D: 2, Classes: classes}
}

func probExpect(t *testing.T, name string, p Problem, w []float64, i int, wantF float64, wantG []float64) {
	t.Helper()
	g := make([]float64, p.NumParams())
	f := p.LossGrad(g, w, i)
	if !probNear(f, wantF, probTolExact) {
		t.Errorf("%s: f_%d = %v, want %v", name, i, f, wantF)
	}
	for j := range wantG {
		if !probNear(g[j], wantG[j], probTolExact) {
			t.Errorf("%s: ∇f_%d = %v, want %v", name, i, g, wantG)
			return
		}
	}
}

func TestLeastSquaresByHand(t *testing.T) {
	p, err := NewLeastSquares(probTwo(1, 2, 0), 0.1)
	if err != nil {
		t.Fatal(err)
	}
	w := []float64{0.5, -1, 0.25} // weights, then the intercept
	// z_0 = 0.5 − 2 + 0.25 = −1.25, r_0 = −2.25: f_0 = ½·5.0625 + 0.05·1.25.
	probExpect(t, "least squares", p, w, 0, 2.59375, []float64{-2.2, -4.6, -2.25})
	// z_1 = 1.5 + 1 + 0.25 = 2.75, r_1 = 0.75: f_1 = ½·0.5625 + 0.0625.
	probExpect(t, "least squares", p, w, 1, 0.34375, []float64{2.3, -0.85, 0.75})
	g := make([]float64, 3)
	if f := FullLoss(p, g, w); !probNear(f, 1.46875, probTolExact) ||
		!floats.EqualApprox(g, []float64{0.05, -2.725, -0.75}, probTolExact) {
		t.Errorf("F = %v, ∇F = %v; want 1.46875, [0.05 −2.725 −0.75]", f, g)
	}
	if got := p.Predict(w, []float64{1, 2}); !probNear(got, -1.25, probTolExact) {
		t.Errorf("Predict = %v, want −1.25", got)
	}
}

func TestLogisticByHand(t *testing.T) {
	p, err := NewLogistic(probTwo(1, 0, 2), 0)
	if err != nil {
		t.Fatal(err)
	}
	w := []float64{0.5, -1, 0.25}
	// z_0 = −1.25, y = 1: f = log(1 + e^{1.25}), ∇ = (σ(−1.25) − 1)·[1, 2, 1].
	probExpect(t, "logistic", p, w, 0, 1.501929081345373,
		[]float64{-0.7772998611746912, -1.5545997223493824, -0.7772998611746912})
	// z_1 = 2.75, y = 0: f = log(1 + e^{2.75}), ∇ = σ(2.75)·[3, −1, 1].
	probExpect(t, "logistic", p, w, 1, 2.8119675890031983,
		[]float64{2.819740049477977, -0.9399133498259924, 0.9399133498259924})
	if p.Predict(w, []float64{1, 2}) != 0 || p.Predict(w, []float64{3, -1}) != 1 {
		t.Error("Predict: want classes 0 and 1 for z = −1.25 and 2.75")
	}
	// With λ: the weights' penalty enters, the intercept's does not.
	pr, _ := NewLogistic(probTwo(1, 0, 2), 2)
	probExpect(t, "logistic λ=2", pr, w, 0, 1.501929081345373+1.25,
		[]float64{-0.7772998611746912 + 1, -1.5545997223493824 - 2, -0.7772998611746912})
}

func TestSoftmaxByHand(t *testing.T) {
	ds := &data.Dataset{X: []float64{1, 2}, Y: []float64{2}, N: 1, D: 2, Classes: 3}
	p, err := NewSoftmax(ds, 0)
	if err != nil {
		t.Fatal(err)
	}
	w := []float64{
		1, 0, 0, // z_0 = 1
		0, 1, 0, // z_1 = 2
		0.5, -0.5, 1, // z_2 = 0.5 − 1 + 1 = 0.5
	}
	// f = log(e + e² + e^½) − ½, ∇_k = (p_k − 1{k = 2})·[1, 2, 1].
	probExpect(t, "softmax", p, w, 0, 1.9643687841079447, []float64{
		0.2312238976221491, 0.4624477952442982, 0.2312238976221491,
		0.6285317192117625, 1.257063438423525, 0.6285317192117625,
		-0.8597556168339116, -1.719511233667823, -0.8597556168339116,
	})
	if got := p.Predict(w, []float64{1, 2}); got != 1 {
		t.Errorf("Predict = %d, want 1", got)
	}
}

func TestLossGradHugeLogits(t *testing.T) {
	// Logistic: z = ±1e3 with both labels.
	ds := &data.Dataset{X: []float64{1e3, -1e3}, Y: []float64{0, 1}, N: 2, D: 1, Classes: 2}
	lg, err := NewLogistic(ds, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []float64{1, -1} {
		w := []float64{s, 0}
		g := make([]float64, 2)
		for i := range 2 {
			f := lg.LossGrad(g, w, i)
			z := ds.X[i] * s
			want := math.Max(z, 0) - ds.Y[i]*z // the exact loss to float64 precision
			if !probNear(f, want, probTolExact) || !probFinite(g) {
				t.Errorf("logistic z = %v, y = %v: f = %v (want %v), ∇ = %v", z, ds.Y[i], f, want, g)
			}
		}
	}
	// Softmax: logits (1e3, −1e3, 0) for each label: f = 1e3 − z_y.
	sds := &data.Dataset{X: []float64{1, 1, 1}, Y: []float64{0, 1, 2}, N: 3, D: 1, Classes: 3}
	sm, err := NewSoftmax(sds, 0, NoIntercept())
	if err != nil {
		t.Fatal(err)
	}
	w := []float64{1e3, -1e3, 0}
	g := make([]float64, 3)
	for i := range 3 {
		f := sm.LossGrad(g, w, i)
		if want := 1e3 - w[i]; !probNear(f, want, probTolExact) || !probFinite(g) {
			t.Errorf("softmax y = %d: f = %v (want %v), ∇ = %v", i, f, want, g)
		}
	}
	// MLP with huge weights: saturated tanh, huge logits.
	mds := probData(rand.New(rand.NewPCG(3, 3)), 4, 3, 2)
	for _, act := range []Activation{Tanh, ReLU} {
		m, err := NewMLP(mds, 3, act, 0)
		if err != nil {
			t.Fatal(err)
		}
		w := probRandW(rand.New(rand.NewPCG(4, 4)), m.NumParams(), 1e3)
		g := make([]float64, m.NumParams())
		for i := range mds.N {
			if f := m.LossGrad(g, w, i); math.IsNaN(f) || math.IsInf(f, 0) || !probFinite(g) {
				t.Errorf("MLP %v, example %d: f = %v, ∇ finite: %v", act, i, f, probFinite(g))
			}
		}
	}
}

func TestProblemConstructorErrors(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 5))
	multi := probData(rng, 6, 2, 3)
	reg := &data.Dataset{X: []float64{1, 2}, Y: []float64{0.5, 1}, N: 2, D: 1}
	bad := &data.Dataset{X: []float64{1, math.NaN()}, Y: []float64{0, 1}, N: 2, D: 1, Classes: 2}
	for _, tc := range []struct {
		name string
		err  error
		want error
		msg  string
	}{
		{"l2 < 0", probErrOf(NewLeastSquares(reg, -1)), gdiv.ErrParam, "L2"},
		{"l2 NaN", probErrOf(NewSoftmax(multi, math.NaN())), gdiv.ErrParam, "L2"},
		{"l2 +Inf", probErrOf(NewMLP(multi, 2, Tanh, math.Inf(1))), gdiv.ErrParam, "L2"},
		{"logistic on 3 classes", probErrOf(NewLogistic(multi, 0)), data.ErrLabel, "Binary"},
		{"softmax on regression", probErrOf(NewSoftmax(reg, 0)), data.ErrLabel, "Classes = 0"},
		{"mlp on regression", probErrOf(NewMLP(reg, 2, ReLU, 0)), data.ErrLabel, "Classes = 0"},
		{"mlp hidden 0", probErrOf(NewMLP(multi, 0, ReLU, 0)), gdiv.ErrParam, "hidden"},
		{"mlp activation", probErrOf(NewMLP(multi, 2, Activation(7), 0)), gdiv.ErrParam, "activation"},
		{"invalid data", probErrOf(NewLeastSquares(bad, 0)), gdiv.ErrNonFinite, "row 1"},
	} {
		if !errors.Is(tc.err, tc.want) || !strings.Contains(tc.err.Error(), tc.msg) {
			t.Errorf("%s: error %v, want %v mentioning %q", tc.name, tc.err, tc.want, tc.msg)
		}
	}
	if _, err := ParseActivation("sigmoid"); !errors.Is(err, gdiv.ErrParam) {
		t.Errorf("ParseActivation(sigmoid): %v", err)
	}
	if a, err := ParseActivation("relu"); err != nil || a != ReLU || a.String() != "relu" || Tanh.String() != "tanh" {
		t.Errorf("ParseActivation(relu) = %v, %v", a, err)
	}
}

func probErrOf[T any](_ T, err error) error { return err }

func probPanics(f func()) (msg string) {
	defer func() {
		if r := recover(); r != nil {
			msg = fmt.Sprint(r)
		}
	}()
	f()
	return ""
}

func TestProblemMisusePanics(t *testing.T) {
	ds := probData(rand.New(rand.NewPCG(6, 6)), 5, 2, 2)
	sm, _ := NewSoftmax(ds, 0)
	w := make([]float64, sm.NumParams())
	for _, tc := range []struct {
		name string
		f    func()
	}{
		{"short w", func() { sm.LossGrad(nil, w[1:], 0) }},
		{"short grad", func() { sm.LossGrad(make([]float64, 2), w, 0) }},
		{"i = n", func() { sm.LossGrad(nil, w, 5) }},
		{"i < 0", func() { sm.LossGrad(nil, w, -1) }},
		{"nil data set", func() { NewLeastSquares(nil, 0) }},
		{"FullLoss no examples", func() { FullLoss(ProblemFunc{Params: 1}, nil, []float64{0}) }},
		{"FullLoss short w", func() { FullLoss(sm, nil, w[1:]) }},
		{"PerExampleGrads dst", func() { PerExampleGrads(make([]float64, 3), sm, w, []int{0}) }},
		{"Predict short x", func() { sm.Predict(w, []float64{1}) }},
		{"ProblemFunc i", func() {
			ProblemFunc{Params: 1, Examples: 1, Func: func(g, w []float64, i int) float64 { return 0 }}.LossGrad(nil, []float64{0}, 1)
		}},
		{"MLP init nil rng", func() { m, _ := NewMLP(ds, 2, Tanh, 0); m.InitialWeights(nil) }},
	} {
		if msg := probPanics(tc.f); !strings.HasPrefix(msg, "gdiv: ") {
			t.Errorf("%s: panic %q, want a \"gdiv: \" panic", tc.name, msg)
		}
	}
}

func TestInitialWeights(t *testing.T) {
	ds := probData(rand.New(rand.NewPCG(7, 7)), 20, 40, 4)
	for _, c := range probCases {
		if c.bin {
			continue
		}
		p, _ := c.make(ds, 0)
		w := p.(Initializer).InitialWeights(rand.New(rand.NewPCG(8, 8)))
		if len(w) != p.NumParams() {
			t.Fatalf("%s: len = %d, want %d", c.name, len(w), p.NumParams())
		}
		if _, isMLP := p.(*MLP); !isMLP {
			if floats.Norm(w, 2) != 0 {
				t.Errorf("%s: initial weights not zero", c.name)
			}
		}
	}
	for _, act := range []Activation{Tanh, ReLU} {
		m, _ := NewMLP(ds, 30, act, 0)
		w1 := m.InitialWeights(rand.New(rand.NewPCG(9, 9)))
		w2 := m.InitialWeights(rand.New(rand.NewPCG(9, 9)))
		w3 := m.InitialWeights(rand.New(rand.NewPCG(9, 10)))
		if !floats.Equal(w1, w2) || floats.Equal(w1, w3) {
			t.Errorf("%v: not deterministic per seed", act)
		}
		// Biases are zero; hidden weights have the Glorot/He variance.
		var ss float64
		for j := range m.h {
			if w1[j*m.s1+m.d] != 0 {
				t.Fatalf("%v: hidden bias %d = %v", act, j, w1[j*m.s1+m.d])
			}
			r := w1[j*m.s1 : j*m.s1+m.d]
			ss += floats.Dot(r, r)
		}
		want := 2.0 / float64(m.d+m.h)
		if act == ReLU {
			want = 2.0 / float64(m.d)
		}
		// 1200 draws: the sample variance is within 15% w.p. ≫ 0.999.
		if got := ss / float64(m.h*m.d); math.Abs(got/want-1) > 0.15 {
			t.Errorf("%v: hidden weight variance %v, want %v", act, got, want)
		}
	}
}

func TestAccuracy(t *testing.T) {
	// Two well-separated classes: x < 0 is class 0, x > 0 class 1.
	ds := &data.Dataset{X: []float64{-2, -1, 1, 2}, Y: []float64{0, 0, 1, 1}, N: 4, D: 1, Classes: 2}
	lg, _ := NewLogistic(ds, 0)
	if a, err := Accuracy(lg, []float64{1, 0}, ds); err != nil || a != 1 {
		t.Errorf("Accuracy = %v, %v; want 1", a, err)
	}
	if a, _ := Accuracy(lg, []float64{-1, 0}, ds); a != 0 {
		t.Errorf("Accuracy of the flipped model = %v, want 0", a)
	}
	sm, _ := NewSoftmax(ds, 0)
	if a, _ := Accuracy(sm, []float64{-1, 0, 1, 0}, ds); a != 1 {
		t.Errorf("softmax Accuracy = %v, want 1", a)
	}
	ls, _ := NewLeastSquares(ds, 0)
	reg := &data.Dataset{X: []float64{1}, Y: []float64{0.5}, N: 1, D: 1}
	wide := &data.Dataset{X: []float64{1, 2}, Y: []float64{0}, N: 1, D: 2, Classes: 2}
	three := &data.Dataset{X: []float64{1}, Y: []float64{2}, N: 1, D: 1, Classes: 3}
	for _, tc := range []struct {
		name string
		p    Problem
		ds   *data.Dataset
		want error
	}{
		{"least squares", ls, ds, gdiv.ErrParam},
		{"regression data", lg, reg, gdiv.ErrParam},
		{"feature mismatch", lg, wide, gdiv.ErrShape},
		{"more classes", lg, three, data.ErrLabel},
		{"invalid data", lg, &data.Dataset{N: 1, D: 1, X: []float64{1}}, gdiv.ErrShape},
	} {
		if _, err := Accuracy(tc.p, make([]float64, tc.p.NumParams()), tc.ds); !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
	}
}

// Gradient descent on the standardized breast-cancer data reaches the
// accuracy logistic regression is known to reach (≈ 0.98 on the training
// set); this checks the problem end to end, not just its derivatives.
func TestLogisticTrainsOnBreastCancer(t *testing.T) {
	raw, err := data.LoadBuiltin("breast_cancer")
	if err != nil {
		t.Fatal(err)
	}
	ds, _ := raw.Standardize()
	p, err := NewLogistic(ds, 1e-3)
	if err != nil {
		t.Fatal(err)
	}
	w := p.InitialWeights(nil)
	g := make([]float64, len(w))
	f0 := FullLoss(p, nil, w)
	for range 200 {
		FullLoss(p, g, w)
		floats.AddScaled(w, -1, g)
	}
	f := FullLoss(p, nil, w)
	acc, err := Accuracy(p, w, ds)
	if err != nil || acc < 0.97 || !(f < f0/5) {
		t.Errorf("after 200 steps: F = %v (from %v), accuracy %v, %v", f, f0, acc, err)
	}
}

// Theorem 1 on the problems themselves: for λ = 0 the per-example gradients
// of LeastSquares and Logistic are a_i x̃_i, so B_S(w) ≥ BoundGLM(Design).
func TestGLMDesignBound(t *testing.T) {
	rng := rand.New(rand.NewPCG(10, 10))
	ds := probData(rng, 40, 6, 2)
	for _, opts := range [][]ProblemOption{nil, {NoIntercept()}} {
		ls, _ := NewLeastSquares(ds, 0, opts...)
		lg, _ := NewLogistic(ds, 0, opts...)
		for _, p := range []GLM{ls, lg} {
			x, n, d := p.Design()
			if n != ds.N || d != p.NumParams() {
				t.Fatalf("%T: Design is %d×%d, want %d×%d", p, n, d, ds.N, p.NumParams())
			}
			if d == ds.D+1 && (x[d-1] != 1 || x[0] != ds.X[0]) {
				t.Fatalf("%T: design row 0 = %v", p, x[:d])
			}
			b, err := gdiv.BoundGLM(x, n, d)
			if err != nil {
				t.Fatal(err)
			}
			for range 5 {
				grads, _ := PerExampleGrads(nil, p, probRandW(rng, d, 1), nil)
				s, err := gdiv.ComputeStats(grads, n, d)
				if err != nil {
					t.Fatal(err)
				}
				if s.BatchBound < b.BatchBoundLower*(1-probBoundTol) {
					t.Errorf("%T: B_S = %v below Theorem 1's %v", p, s.BatchBound, b.BatchBoundLower)
				}
			}
		}
	}
}

func TestPerExampleGradsSubset(t *testing.T) {
	ds := probData(rand.New(rand.NewPCG(11, 11)), 6, 3, 3)
	p, _ := NewSoftmax(ds, 0.2)
	w := probRandW(rand.New(rand.NewPCG(12, 12)), p.NumParams(), 1)
	np := p.NumParams()
	idx := []int{4, 1, 4}
	grads, mean := PerExampleGrads(nil, p, w, idx)
	g := make([]float64, np)
	var sum float64
	for k, i := range idx {
		sum += p.LossGrad(g, w, i)
		if !floats.Equal(g, grads[k*np:(k+1)*np]) {
			t.Fatalf("row %d differs from LossGrad of example %d", k, i)
		}
	}
	if !probNear(mean, sum/3, probTolExact) {
		t.Errorf("mean loss %v, want %v", mean, sum/3)
	}
}

func TestProblemFunc(t *testing.T) {
	// f_i(w) = ½(w − c_i)², c = (1, 2, 6): F is minimized at the mean, 3.
	c := []float64{1, 2, 6}
	p := ProblemFunc{Params: 1, Examples: 3, Func: func(grad, w []float64, i int) float64 {
		r := w[0] - c[i]
		if grad != nil {
			grad[0] = r
		}
		return 0.5 * r * r
	}}
	g := []float64{0}
	if f := FullLoss(p, g, []float64{3}); !probNear(f, 7.0/3, probTolExact) || g[0] != 0 {
		t.Errorf("F(3) = %v, ∇F = %v; want 7/3, 0", f, g[0])
	}
}

func probFinite(v []float64) bool {
	for _, x := range v {
		if math.IsNaN(x) || math.IsInf(x, 0) {
			return false
		}
	}
	return true
}
