package train

import (
	"fmt"
	"math"
	"math/rand/v2"

	"github.com/gdiv/gdiv/gdiv/data"

	"gonum.org/v1/gonum/floats"
)

// Activation is the hidden-layer nonlinearity of an MLP.
type Activation int

const (
	// Tanh is the hyperbolic tangent, tanh'(a) = 1 − tanh²(a).
	Tanh Activation = iota
	// ReLU is max(a, 0); its derivative is taken as 0 at a = 0 (as in
	// PyTorch and TensorFlow).
	ReLU
)

// String returns "tanh" or "relu".
func (a Activation) String() string {
	switch a {
	case Tanh:
		return "tanh"
	case ReLU:
		return "relu"
	}
	return fmt.Sprintf("Activation(%d)", int(a))
}

// ParseActivation returns the Activation named s ("tanh" or "relu"), or an
// ErrParam error.
func ParseActivation(s string) (Activation, error) {
	switch s {
	case "tanh":
		return Tanh, nil
	case "relu":
		return ReLU, nil
	}
	return 0, paramErr("unknown activation %q (known: tanh, relu)", s)
}

// MLP is a classifier with one hidden layer of H units and a softmax
// output over K classes, trained with the cross-entropy loss:
//
//	a = W1 x_i + b1,  h = act(a),  z = W2 h + b2,
//	f_i(w) = log Σ_k e^{z_k} − z_{y_i} + (λ/2)(‖W1‖² + ‖W2‖²),
//
// the biases b1, b2 not penalized. Gradients are by backpropagation:
// δz = softmax(z) − e_y, ∇W2 = δz [h, 1]ᵀ, δa = (W2ᵀδz) ⊙ act'(a),
// ∇W1 = δa [x, 1]ᵀ. The parameters are W1 (H×(D+1), row j = [W1_j1 …
// W1_jD, b1_j]) followed by W2 (K×(H+1)); without intercepts, H×D and K×H.
//
// An MLP keeps scratch space for one example: it is not safe for
// concurrent use.
type MLP struct {
	ds        *data.Dataset
	l2        float64
	intercept bool
	act       Activation
	d, h, k   int
	s1, s2    int // row strides of W1 and W2
	off2      int // offset of W2 in w
	labels    []int

	a, hv, z []float64 // scratch: pre-activations, activations, logits
}

// NewMLP returns the one-hidden-layer network on the classification data
// set ds (Classes = K ≥ 2) with hidden units, activation act and L2
// coefficient l2 ≥ 0, with biases unless NoIntercept is given. The problem
// keeps ds (not a copy): do not modify it while the problem is in use.
//
// It returns ds.Validate's error, an ErrLabel error unless ds.Classes ≥ 2,
// or an ErrParam error for hidden < 1, an unknown activation, or a negative
// or non-finite l2. It panics if ds is nil.
func NewMLP(ds *data.Dataset, hidden int, act Activation, l2 float64, opts ...ProblemOption) (*MLP, error) {
	if ds == nil {
		panic("gdiv: nil data set")
	}
	l, err := newLinear(ds, l2, 1, opts)
	if err != nil {
		return nil, err
	}
	switch {
	case ds.Classes < 2:
		return nil, fmt.Errorf("%w: an MLP classifier needs a classification data set with Classes ≥ 2; %s has Classes = %d",
			data.ErrLabel, ds.DisplayName(), ds.Classes)
	case hidden < 1:
		return nil, paramErr("MLP: %d hidden units, want at least 1", hidden)
	case act != Tanh && act != ReLU:
		return nil, paramErr("MLP: unknown activation %v", act)
	}
	l.intLabels()
	p := &MLP{
		ds: ds, l2: l2, intercept: l.intercept, act: act,
		d: ds.D, h: hidden, k: ds.Classes,
		s1: ds.D, s2: hidden,
		labels: l.labels,
		a:      make([]float64, hidden), hv: make([]float64, hidden), z: make([]float64, ds.Classes),
	}
	if p.intercept {
		p.s1++
		p.s2++
	}
	p.off2 = p.h * p.s1
	return p, nil
}

// NumParams returns H·(D+1) + K·(H+1) (H·D + K·H without biases).
func (p *MLP) NumParams() int { return p.off2 + p.k*p.s2 }

// NumExamples returns the number of examples N.
func (p *MLP) NumExamples() int { return p.ds.N }

// NumFeatures returns D.
func (p *MLP) NumFeatures() int { return p.d }

// NumClasses returns K.
func (p *MLP) NumClasses() int { return p.k }

// Hidden returns the number of hidden units H.
func (p *MLP) Hidden() int { return p.h }

// Activation returns the hidden-layer activation.
func (p *MLP) Activation() Activation { return p.act }

// Dataset returns the problem's data set (not a copy).
func (p *MLP) Dataset() *data.Dataset { return p.ds }

// L2 returns the L2 coefficient λ.
func (p *MLP) L2() float64 { return p.l2 }

// HasIntercept reports whether the layers have biases.
func (p *MLP) HasIntercept() bool { return p.intercept }

// forward computes a, h and z for features x.
func (p *MLP) forward(w, x []float64) {
	w1, w2 := w[:p.off2], w[p.off2:]
	for j := range p.h {
		row := w1[j*p.s1 : (j+1)*p.s1]
		a := floats.Dot(row[:p.d], x)
		if p.intercept {
			a += row[p.d]
		}
		p.a[j] = a
		switch p.act {
		case Tanh:
			p.hv[j] = math.Tanh(a)
		case ReLU:
			p.hv[j] = max(a, 0)
		}
	}
	for k := range p.k {
		row := w2[k*p.s2 : (k+1)*p.s2]
		z := floats.Dot(row[:p.h], p.hv)
		if p.intercept {
			z += row[p.h]
		}
		p.z[k] = z
	}
}

func (p *MLP) penalty(w []float64) float64 {
	if p.l2 == 0 {
		return 0
	}
	var ss float64
	for j := range p.h {
		r := w[j*p.s1 : j*p.s1+p.d]
		ss += floats.Dot(r, r)
	}
	for k := range p.k {
		r := w[p.off2+k*p.s2 : p.off2+k*p.s2+p.h]
		ss += floats.Dot(r, r)
	}
	return 0.5 * p.l2 * ss
}

// LossGrad returns f_i(w) and writes ∇f_i(w) into grad when it is not nil;
// see Problem.
func (p *MLP) LossGrad(grad, w []float64, i int) float64 {
	checkArgs(grad, w, i, p.NumParams(), p.ds.N)
	x := p.ds.X[i*p.d : (i+1)*p.d]
	p.forward(w, x)
	y := p.labels[i]
	if grad == nil {
		return crossEntropy(nil, p.z, y) + p.penalty(w)
	}
	loss := crossEntropy(p.z, p.z, y) + p.penalty(w) // z now holds δz
	w1, w2 := w[:p.off2], w[p.off2:]
	g1, g2 := grad[:p.off2], grad[p.off2:]
	// Overwrite a with act'(a), then with δa = act'(a) ⊙ W2ᵀδz.
	for j := range p.h {
		switch p.act {
		case Tanh:
			p.a[j] = 1 - p.hv[j]*p.hv[j]
		case ReLU:
			if p.a[j] > 0 {
				p.a[j] = 1
			} else {
				p.a[j] = 0
			}
		}
	}
	for j := range p.h {
		var s float64
		for k := range p.k {
			s += w2[k*p.s2+j] * p.z[k]
		}
		p.a[j] *= s
	}
	for k := range p.k {
		g := g2[k*p.s2 : (k+1)*p.s2]
		dz := p.z[k]
		if p.l2 != 0 {
			floats.ScaleTo(g[:p.h], p.l2, w2[k*p.s2:k*p.s2+p.h])
			floats.AddScaled(g[:p.h], dz, p.hv)
		} else {
			floats.ScaleTo(g[:p.h], dz, p.hv)
		}
		if p.intercept {
			g[p.h] = dz
		}
	}
	for j := range p.h {
		g := g1[j*p.s1 : (j+1)*p.s1]
		da := p.a[j]
		if p.l2 != 0 {
			floats.ScaleTo(g[:p.d], p.l2, w1[j*p.s1:j*p.s1+p.d])
			floats.AddScaled(g[:p.d], da, x)
		} else {
			floats.ScaleTo(g[:p.d], da, x)
		}
		if p.intercept {
			g[p.d] = da
		}
	}
	return loss
}

// Predict returns the class with the largest logit z_k (the smallest such
// k on ties). It panics if the lengths are wrong.
func (p *MLP) Predict(w, x []float64) int {
	if len(w) != p.NumParams() {
		panic(fmt.Sprintf("gdiv: Predict: len(w) = %d, want NumParams() = %d", len(w), p.NumParams()))
	}
	if len(x) != p.d {
		panic(fmt.Sprintf("gdiv: Predict: len(x) = %d, want %d features", len(x), p.d))
	}
	p.forward(w, x)
	best, arg := math.Inf(-1), 0
	for k, z := range p.z {
		if z > best {
			best, arg = z, k
		}
	}
	return arg
}

// InitialWeights returns seeded random weights with zero biases: the hidden
// layer from N(0, 2/(D+H)) for Tanh (Glorot normal) or N(0, 2/D) for ReLU
// (He normal), the output layer from N(0, 2/(H+K)) (Glorot normal). The
// draws are taken in parameter order (W1 row by row, then W2), so the
// result is a deterministic function of rng's state. It panics if rng is
// nil.
func (p *MLP) InitialWeights(rng *rand.Rand) []float64 {
	if rng == nil {
		panic("gdiv: MLP.InitialWeights: nil rng")
	}
	w := make([]float64, p.NumParams())
	std1 := math.Sqrt(2 / float64(p.d+p.h))
	if p.act == ReLU {
		std1 = math.Sqrt(2 / float64(p.d))
	}
	std2 := math.Sqrt(2 / float64(p.h+p.k))
	for j := range p.h {
		for c := range p.d {
			w[j*p.s1+c] = std1 * rng.NormFloat64()
		}
	}
	for k := range p.k {
		for c := range p.h {
			w[p.off2+k*p.s2+c] = std2 * rng.NormFloat64()
		}
	}
	return w
}
