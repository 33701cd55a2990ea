package train

import (
	"fmt"
	"math"
	"math/rand/v2"

	"github.com/gdiv/gdiv/gdiv"
	"github.com/gdiv/gdiv/gdiv/data"

	"gonum.org/v1/gonum/floats"
)

// Empirical risk minimization problems (Section 3, eq. 1):
//
//	F(w) = (1/n) Σ_i f_i(w),   f_i(w) = f(w; z_i),
//
// with per-example gradients ∇f_i(w), the g_i of the diversity statistics.
//
// Regularization. Every problem here takes an L2 coefficient λ ≥ 0 and puts
// the penalty into each f_i:
//
//	f_i(w) = ℓ_i(w) + (λ/2)‖W‖²,   ∇f_i(w) = ∇ℓ_i(w) + λW,
//
// W the weights without the intercepts. With a regularizer this is the
// paper's f_i: F is still the mean of the f_i, and the penalty's gradient λW
// is part of every g_i, so it enters the gradient diversity (a common term
// that lowers Δ). Intercepts (one bias per output unit) are not penalized,
// as in scikit-learn: penalizing them would make the fit depend on where
// the features and targets are centred. NoIntercept removes the biases,
// which the paper's examples need: with a bias, every GLM gradient has the
// same nonzero bias coordinate, so Theorem 2's conflict graph is complete.
//
// Parameter layouts (row-major; S = D+1 with intercepts, D without):
//
//	LeastSquares, Logistic   w = [w_1 … w_D, b]                    (S parameters)
//	Softmax                  K×S: row k = [W_k1 … W_kD, b_k]       (K·S)
//	MLP                      W1 (H×S) then W2 (K×(H+1)), rows as above
//
// The losses, with z the model's output for x_i (ℓ is the per-example loss
// before the penalty):
//
//	LeastSquares  ℓ_i = ½(x_iᵀw + b − y_i)²,       ∇ = r_i·[x_i, 1],  r_i = x_iᵀw + b − y_i
//	Logistic      ℓ_i = log(1 + e^z) − y_i z,      ∇ = (σ(z) − y_i)·[x_i, 1],  y_i ∈ {0, 1}
//	Softmax       ℓ_i = log Σ_k e^{z_k} − z_{y_i}, ∇_k = (p_k − 1{k = y_i})·[x_i, 1]
//
// computed stably (softplus as max(z, 0) + log1p(e^{−|z|}), log-sum-exp
// shifted by max z), so logits of any finite size give finite losses and
// gradients. LeastSquares and Logistic are generalized linear losses
// ℓ_i(x̃_iᵀw) with ∇ℓ_i = a_i x̃_i (Theorem 1); their Design method returns
// the rows x̃_i for BoundGLM.

// Problem is a per-example differentiable loss f_i(w), i = 0..n−1, over
// parameters w ∈ R^p (modelled on gonum's optimize.Problem).
//
// The problems of this package (LeastSquares, Logistic, Softmax, MLP) put
// their L2 penalty (λ/2)‖W‖² into every f_i, so F is the regularized risk
// and ∇f_i includes λW: with a regularizer, that f_i is the paper's f_i,
// whose gradients the diversity statistics measure. Intercepts are not
// penalized.
//
// Implementations may keep scratch space: a Problem is not safe for
// concurrent use (construct one per goroutine; the problems of this
// package share their Dataset read-only, so that is cheap).
type Problem interface {
	// NumParams returns p, the number of parameters.
	NumParams() int
	// NumExamples returns n, the number of examples.
	NumExamples() int
	// LossGrad returns f_i(w) and, when grad != nil, writes ∇f_i(w)
	// into grad (len NumParams()), overwriting it. grad must not alias
	// w. The problems of this package panic if len(w) or len(grad) is
	// not NumParams() or i is not in [0, NumExamples()).
	LossGrad(grad, w []float64, i int) float64
}

// Initializer is implemented by problems that know a good starting point.
type Initializer interface {
	// InitialWeights returns a fresh parameter vector of length
	// NumParams() drawn from rng (which may be nil when the initial
	// weights are not random).
	InitialWeights(rng *rand.Rand) []float64
}

// Classifier is a Problem whose model predicts classes.
type Classifier interface {
	Problem
	// NumFeatures returns D, the length of a feature vector.
	NumFeatures() int
	// NumClasses returns K, the number of classes.
	NumClasses() int
	// Predict returns the predicted class in [0, NumClasses()) of the
	// feature vector x (len NumFeatures()) under parameters w.
	Predict(w, x []float64) int
}

// GLM is a Problem whose unregularized per-example gradients have the
// generalized-linear form ∇f_i(w) = a_i(w)·x̃_i (Theorem 1), x̃_i the rows
// of the design matrix.
type GLM interface {
	Problem
	// Design returns a fresh copy of the row-major n×d design matrix,
	// d = NumParams(): row i is x̃_i = [x_i, 1] with an intercept and x_i
	// without. With λ = 0, B_S(w) ≥ BoundGLM(p.Design()).BatchBoundLower
	// for every w.
	Design() (x []float64, n, d int)
}

// FullLoss returns F(w) = (1/n) Σ_i f_i(w) (eq. 1) and, when grad != nil,
// writes ∇F(w) = (1/n) Σ_i ∇f_i(w) into grad (len NumParams()). It
// allocates one scratch gradient when grad != nil.
//
// It panics if p has no examples or the lengths of w or grad are not
// p.NumParams().
func FullLoss(p Problem, grad, w []float64) float64 {
	n, np := p.NumExamples(), p.NumParams()
	if n < 1 {
		panic("gdiv: FullLoss: the problem has no examples")
	}
	if len(w) != np {
		panic(fmt.Sprintf("gdiv: FullLoss: len(w) = %d, want NumParams() = %d", len(w), np))
	}
	if grad == nil {
		var sum float64
		for i := range n {
			sum += p.LossGrad(nil, w, i)
		}
		return sum / float64(n)
	}
	if len(grad) != np {
		panic(fmt.Sprintf("gdiv: FullLoss: len(grad) = %d, want NumParams() = %d", len(grad), np))
	}
	for j := range grad {
		grad[j] = 0
	}
	g := make([]float64, np)
	var sum float64
	for i := range n {
		sum += p.LossGrad(g, w, i)
		floats.Add(grad, g)
	}
	inv := 1 / float64(n)
	floats.Scale(inv, grad)
	return sum * inv
}

// PerExampleGrads writes the per-example gradients ∇f_i(w), i = idx[0],
// idx[1], …, as the rows of the row-major len(idx)×NumParams() buffer dst,
// ready for ComputeStats, and returns the mean of the losses f_i(w). A nil
// idx means every example 0..n−1. dst may be nil, in which case a new
// buffer is allocated; the filled buffer is returned.
//
// It panics if dst is not nil and has the wrong length, idx is empty, or
// an index is out of range.
func PerExampleGrads(dst []float64, p Problem, w []float64, idx []int) ([]float64, float64) {
	rows := len(idx)
	if idx == nil {
		rows = p.NumExamples()
	}
	if rows == 0 {
		panic("gdiv: PerExampleGrads: no examples")
	}
	np := p.NumParams()
	if dst == nil {
		dst = make([]float64, rows*np)
	} else if len(dst) != rows*np {
		panic(fmt.Sprintf("gdiv: PerExampleGrads: len(dst) = %d, want %d×%d = %d", len(dst), rows, np, rows*np))
	}
	var sum float64
	for k := range rows {
		i := k
		if idx != nil {
			i = idx[k]
		}
		sum += p.LossGrad(dst[k*np:(k+1)*np:(k+1)*np], w, i)
	}
	return dst, sum / float64(rows)
}

// ProblemFunc adapts a closure to Problem for users' own losses: Func(grad,
// w, i) must return f_i(w) and, when grad != nil, write ∇f_i(w) into grad.
type ProblemFunc struct {
	Params, Examples int
	Func             func(grad, w []float64, i int) float64
}

// NumParams returns Params.
func (p ProblemFunc) NumParams() int { return p.Params }

// NumExamples returns Examples.
func (p ProblemFunc) NumExamples() int { return p.Examples }

// LossGrad calls Func. It panics if the lengths of w or grad are not
// Params or i is out of range.
func (p ProblemFunc) LossGrad(grad, w []float64, i int) float64 {
	checkArgs(grad, w, i, p.Params, p.Examples)
	return p.Func(grad, w, i)
}

func checkArgs(grad, w []float64, i, np, n int) {
	if len(w) != np {
		panic(fmt.Sprintf("gdiv: LossGrad: len(w) = %d, want NumParams() = %d", len(w), np))
	}
	if grad != nil && len(grad) != np {
		panic(fmt.Sprintf("gdiv: LossGrad: len(grad) = %d, want NumParams() = %d", len(grad), np))
	}
	if i < 0 || i >= n {
		panic(fmt.Sprintf("gdiv: LossGrad: example %d out of range [0, %d)", i, n))
	}
}

// ProblemOption modifies how a problem is built.
type ProblemOption func(*problemConfig)

type problemConfig struct {
	noIntercept bool
}

// NoIntercept builds the problem without intercepts (bias parameters), so
// that the model is linear rather than affine in the features, as in the
// paper's generalized linear (Theorem 1) and sparse (Theorem 2) examples.
func NoIntercept() ProblemOption {
	return func(c *problemConfig) { c.noIntercept = true }
}

// linear holds what the linear problems share: K output rows of S = D+1
// (or D) parameters each.
type linear struct {
	ds        *data.Dataset
	l2        float64
	intercept bool
	d, s, k   int   // features, row stride, outputs
	labels    []int // class labels (classifiers only)
}

func newLinear(ds *data.Dataset, l2 float64, outputs int, opts []ProblemOption) (linear, error) {
	if ds == nil {
		panic("gdiv: nil data set")
	}
	var c problemConfig
	for _, o := range opts {
		o(&c)
	}
	if err := ds.Validate(); err != nil {
		return linear{}, err
	}
	if !(l2 >= 0) || math.IsInf(l2, 1) {
		return linear{}, paramErr("L2 coefficient %v: want a finite λ ≥ 0", l2)
	}
	l := linear{ds: ds, l2: l2, intercept: !c.noIntercept, d: ds.D, s: ds.D, k: outputs}
	if l.intercept {
		l.s++
	}
	return l, nil
}

func (l *linear) intLabels() {
	l.labels = make([]int, l.ds.N)
	for i, y := range l.ds.Y {
		l.labels[i] = int(y)
	}
}

// out returns w_kᵀx + b_k for output row k.
func (l *linear) out(w, x []float64, k int) float64 {
	row := w[k*l.s : (k+1)*l.s]
	z := floats.Dot(row[:l.d], x)
	if l.intercept {
		z += row[l.d]
	}
	return z
}

// penalty returns (λ/2)‖W‖² over the non-bias weights.
func (l *linear) penalty(w []float64) float64 {
	if l.l2 == 0 {
		return 0
	}
	var ss float64
	for k := range l.k {
		wk := w[k*l.s : k*l.s+l.d]
		ss += floats.Dot(wk, wk)
	}
	return 0.5 * l.l2 * ss
}

// gradRow writes coef·[x, 1] + λ[W_k, 0] into row k of grad.
func (l *linear) gradRow(grad, w, x []float64, k int, coef float64) {
	g := grad[k*l.s : (k+1)*l.s]
	if l.l2 != 0 {
		floats.ScaleTo(g[:l.d], l.l2, w[k*l.s:k*l.s+l.d])
		floats.AddScaled(g[:l.d], coef, x)
	} else {
		floats.ScaleTo(g[:l.d], coef, x)
	}
	if l.intercept {
		g[l.d] = coef
	}
}

func (l *linear) design() ([]float64, int, int) {
	n := l.ds.N
	x := make([]float64, n*l.s)
	for i := range n {
		copy(x[i*l.s:], l.ds.Row(i))
		if l.intercept {
			x[i*l.s+l.d] = 1
		}
	}
	return x, n, l.s
}

func (l *linear) checkX(x []float64) {
	if len(x) != l.d {
		panic(fmt.Sprintf("gdiv: Predict: len(x) = %d, want %d features", len(x), l.d))
	}
}

func (l *linear) checkW(w []float64) {
	if len(w) != l.k*l.s {
		panic(fmt.Sprintf("gdiv: Predict: len(w) = %d, want NumParams() = %d", len(w), l.k*l.s))
	}
}

// LeastSquares is linear least-squares regression,
// f_i(w) = ½(x_iᵀw + b − y_i)² + (λ/2)‖w‖² (b not penalized).
type LeastSquares struct{ linear }

// NewLeastSquares returns the least-squares problem on ds with L2
// coefficient l2 ≥ 0, with an intercept unless NoIntercept is given. The
// labels are used as real targets whatever ds.Classes is. The problem keeps
// ds (not a copy): do not modify it while the problem is in use.
//
// It returns ds.Validate's error, or an ErrParam error for a negative or
// non-finite l2. It panics if ds is nil.
func NewLeastSquares(ds *data.Dataset, l2 float64, opts ...ProblemOption) (*LeastSquares, error) {
	l, err := newLinear(ds, l2, 1, opts)
	if err != nil {
		return nil, err
	}
	return &LeastSquares{l}, nil
}

// NumParams returns D+1 (D without intercept).
func (p *LeastSquares) NumParams() int { return p.s }

// NumExamples returns the number of examples N.
func (p *LeastSquares) NumExamples() int { return p.ds.N }

// Dataset returns the problem's data set (not a copy).
func (p *LeastSquares) Dataset() *data.Dataset { return p.ds }

// L2 returns the L2 coefficient λ.
func (p *LeastSquares) L2() float64 { return p.l2 }

// HasIntercept reports whether the model has an intercept parameter.
func (p *LeastSquares) HasIntercept() bool { return p.intercept }

// LossGrad returns f_i(w) and writes ∇f_i(w) into grad when it is not nil;
// see Problem.
func (p *LeastSquares) LossGrad(grad, w []float64, i int) float64 {
	checkArgs(grad, w, i, p.s, p.ds.N)
	x := p.ds.X[i*p.d : (i+1)*p.d]
	r := p.out(w, x, 0) - p.ds.Y[i]
	if grad != nil {
		p.gradRow(grad, w, x, 0, r)
	}
	return 0.5*r*r + p.penalty(w)
}

// Predict returns xᵀw + b. It panics if the lengths are wrong.
func (p *LeastSquares) Predict(w, x []float64) float64 {
	p.checkW(w)
	p.checkX(x)
	return p.out(w, x, 0)
}

// Design returns the design matrix; see GLM.
func (p *LeastSquares) Design() (x []float64, n, d int) { return p.design() }

// InitialWeights returns zeros (rng is not used and may be nil).
func (p *LeastSquares) InitialWeights(rng *rand.Rand) []float64 { return make([]float64, p.s) }

// Logistic is binary logistic regression with labels y_i ∈ {0, 1}:
// f_i(w) = log(1 + e^{z_i}) − y_i z_i + (λ/2)‖w‖², z_i = x_iᵀw + b.
type Logistic struct{ linear }

// NewLogistic returns the logistic-regression problem on the binary data
// set ds (Classes = 2; see Dataset.Binary) with L2 coefficient l2 ≥ 0, with
// an intercept unless NoIntercept is given. The problem keeps ds.
//
// It returns ds.Validate's error, an ErrLabel error unless ds.Classes = 2,
// or an ErrParam error for a negative or non-finite l2. It panics if ds is
// nil.
func NewLogistic(ds *data.Dataset, l2 float64, opts ...ProblemOption) (*Logistic, error) {
	l, err := newLinear(ds, l2, 1, opts)
	if err != nil {
		return nil, err
	}
	if ds.Classes != 2 {
		return nil, fmt.Errorf("%w: logistic regression needs a binary data set (Classes = 2, labels 0/1); %s has Classes = %d (use Binary)",
			data.ErrLabel, ds.DisplayName(), ds.Classes)
	}
	l.intLabels()
	return &Logistic{l}, nil
}

// NumParams returns D+1 (D without intercept).
func (p *Logistic) NumParams() int { return p.s }

// NumExamples returns the number of examples N.
func (p *Logistic) NumExamples() int { return p.ds.N }

// NumFeatures returns D.
func (p *Logistic) NumFeatures() int { return p.d }

// NumClasses returns 2.
func (p *Logistic) NumClasses() int { return 2 }

// Dataset returns the problem's data set (not a copy).
func (p *Logistic) Dataset() *data.Dataset { return p.ds }

// L2 returns the L2 coefficient λ.
func (p *Logistic) L2() float64 { return p.l2 }

// HasIntercept reports whether the model has an intercept parameter.
func (p *Logistic) HasIntercept() bool { return p.intercept }

// LossGrad returns f_i(w) and writes ∇f_i(w) into grad when it is not nil;
// see Problem.
func (p *Logistic) LossGrad(grad, w []float64, i int) float64 {
	checkArgs(grad, w, i, p.s, p.ds.N)
	x := p.ds.X[i*p.d : (i+1)*p.d]
	z := p.out(w, x, 0)
	var loss, coef float64
	if p.labels[i] == 1 {
		loss, coef = softplus(-z), -sigmoid(-z) // σ(z) − 1 = −σ(−z)
	} else {
		loss, coef = softplus(z), sigmoid(z)
	}
	if grad != nil {
		p.gradRow(grad, w, x, 0, coef)
	}
	return loss + p.penalty(w)
}

// Predict returns 1 when xᵀw + b > 0, else 0. It panics if the lengths are
// wrong.
func (p *Logistic) Predict(w, x []float64) int {
	p.checkW(w)
	p.checkX(x)
	if p.out(w, x, 0) > 0 {
		return 1
	}
	return 0
}

// Design returns the design matrix; see GLM.
func (p *Logistic) Design() (x []float64, n, d int) { return p.design() }

// InitialWeights returns zeros (rng is not used and may be nil).
func (p *Logistic) InitialWeights(rng *rand.Rand) []float64 { return make([]float64, p.s) }

// softplus returns log(1 + e^z) without overflow or cancellation.
func softplus(z float64) float64 {
	return max(z, 0) + math.Log1p(math.Exp(-math.Abs(z)))
}

// sigmoid returns 1/(1 + e^{−z}) without overflow.
func sigmoid(z float64) float64 {
	if z >= 0 {
		return 1 / (1 + math.Exp(-z))
	}
	e := math.Exp(z)
	return e / (1 + e)
}

// Softmax is multinomial logistic regression over K classes:
// f_i(w) = log Σ_k e^{z_k} − z_{y_i} + (λ/2)‖W‖², z_k = W_kᵀx_i + b_k.
type Softmax struct {
	linear
	z []float64 // scratch, K
}

// NewSoftmax returns the multinomial logistic-regression problem on the
// classification data set ds (Classes = K ≥ 2) with L2 coefficient l2 ≥ 0,
// K×(D+1) parameters (K×D with NoIntercept). The problem keeps ds.
//
// It returns ds.Validate's error, an ErrLabel error unless ds.Classes ≥ 2,
// or an ErrParam error for a negative or non-finite l2. It panics if ds is
// nil.
func NewSoftmax(ds *data.Dataset, l2 float64, opts ...ProblemOption) (*Softmax, error) {
	if ds == nil {
		panic("gdiv: nil data set")
	}
	l, err := newLinear(ds, l2, max(ds.Classes, 0), opts)
	if err != nil {
		return nil, err
	}
	if ds.Classes < 2 {
		return nil, fmt.Errorf("%w: softmax regression needs a classification data set with Classes ≥ 2; %s has Classes = %d",
			data.ErrLabel, ds.DisplayName(), ds.Classes)
	}
	l.intLabels()
	return &Softmax{linear: l, z: make([]float64, l.k)}, nil
}

// NumParams returns K·(D+1) (K·D without intercept).
func (p *Softmax) NumParams() int { return p.k * p.s }

// NumExamples returns the number of examples N.
func (p *Softmax) NumExamples() int { return p.ds.N }

// NumFeatures returns D.
func (p *Softmax) NumFeatures() int { return p.d }

// NumClasses returns K.
func (p *Softmax) NumClasses() int { return p.k }

// Dataset returns the problem's data set (not a copy).
func (p *Softmax) Dataset() *data.Dataset { return p.ds }

// L2 returns the L2 coefficient λ.
func (p *Softmax) L2() float64 { return p.l2 }

// HasIntercept reports whether the model has intercept parameters.
func (p *Softmax) HasIntercept() bool { return p.intercept }

// LossGrad returns f_i(w) and writes ∇f_i(w) into grad when it is not nil;
// see Problem.
func (p *Softmax) LossGrad(grad, w []float64, i int) float64 {
	checkArgs(grad, w, i, p.k*p.s, p.ds.N)
	x := p.ds.X[i*p.d : (i+1)*p.d]
	for k := range p.k {
		p.z[k] = p.out(w, x, k)
	}
	y := p.labels[i]
	if grad == nil {
		return crossEntropy(nil, p.z, y) + p.penalty(w)
	}
	loss := crossEntropy(p.z, p.z, y) // z now holds p − e_y
	for k := range p.k {
		p.gradRow(grad, w, x, k, p.z[k])
	}
	return loss + p.penalty(w)
}

// Predict returns the class with the largest output W_kᵀx + b_k (the
// smallest such k on ties). It panics if the lengths are wrong.
func (p *Softmax) Predict(w, x []float64) int {
	p.checkW(w)
	p.checkX(x)
	best, arg := math.Inf(-1), 0
	for k := range p.k {
		if z := p.out(w, x, k); z > best {
			best, arg = z, k
		}
	}
	return arg
}

// InitialWeights returns zeros (rng is not used and may be nil).
func (p *Softmax) InitialWeights(rng *rand.Rand) []float64 { return make([]float64, p.k*p.s) }

// crossEntropy returns log Σ_k e^{z_k} − z_y, computed with the log-sum-exp
// shifted by max z, and, when dz != nil, writes the gradient p − e_y with
// respect to z into dz (dz may be z).
func crossEntropy(dz, z []float64, y int) float64 {
	m := math.Inf(-1)
	for _, v := range z {
		m = max(m, v)
	}
	var s float64
	for _, v := range z {
		s += math.Exp(v - m)
	}
	lse := m + math.Log(s)
	loss := lse - z[y]
	if dz != nil {
		for k, v := range z {
			dz[k] = math.Exp(v - lse)
		}
		dz[y]--
	}
	return loss
}

// Accuracy returns the fraction of the examples of ds that the classifier
// p, with parameters w, labels correctly. ds may be another data set than
// the one p was built on (a test split) with the same features.
//
// It returns an ErrParam error if p is not a Classifier (LeastSquares is
// not) or ds is a regression data set, ErrShape if ds.D is not
// p.NumFeatures(), ds.Validate's error, and an ErrLabel error if ds has more
// classes than p. It panics if len(w) is not p.NumParams().
func Accuracy(p Problem, w []float64, ds *data.Dataset) (float64, error) {
	c, ok := p.(Classifier)
	if !ok {
		return 0, paramErr("Accuracy: %T is not a classifier", p)
	}
	if len(w) != p.NumParams() {
		panic(fmt.Sprintf("gdiv: Accuracy: len(w) = %d, want NumParams() = %d", len(w), p.NumParams()))
	}
	if err := ds.Validate(); err != nil {
		return 0, err
	}
	switch {
	case ds.Classes == 0:
		return 0, paramErr("Accuracy: data set %s is a regression data set (Classes = 0)", ds.DisplayName())
	case ds.D != c.NumFeatures():
		return 0, fmt.Errorf("%w: Accuracy: data set %s has D = %d features, the classifier %d", gdiv.ErrShape, ds.DisplayName(), ds.D, c.NumFeatures())
	case ds.Classes > c.NumClasses():
		return 0, fmt.Errorf("%w: Accuracy: data set %s has %d classes, the classifier %d", data.ErrLabel, ds.DisplayName(), ds.Classes, c.NumClasses())
	}
	correct := 0
	for i := range ds.N {
		if c.Predict(w, ds.Row(i)) == int(ds.Y[i]) {
			correct++
		}
	}
	return float64(correct) / float64(ds.N), nil
}

// InitStream is the PCG stream of SeededInitialWeights; it differs from
// SGD's streams (SGDSamplingStream, the step seeds).
const InitStream uint64 = 0x494e4954 // "INIT"

// SeededInitialWeights returns p's initial weights for a seed: those of its
// Initializer with the source rand.New(rand.NewPCG(seed, InitStream)), or
// zeros when p has no Initializer. The CLI, the Python reference trainer
// and Go users share it, so one seed gives one starting point everywhere.
func SeededInitialWeights(p Problem, seed uint64) []float64 {
	if in, ok := p.(Initializer); ok {
		return in.InitialWeights(rand.New(rand.NewPCG(seed, InitStream)))
	}
	return make([]float64, p.NumParams())
}
