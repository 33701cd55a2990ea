package pybridge

import (
	"fmt"
	"math"
	"unsafe"

	"github.com/gdiv/gdiv/gdiv"
	"github.com/gdiv/gdiv/gdiv/data"
	"github.com/gdiv/gdiv/gdiv/train"
)

// The reference trainer (train.SGD) and its building blocks, for
// gdiv.reference in Python: the ground truth of the framework integrations.
// Stateless: every call builds the problem over the caller's data, runs,
// writes into caller-owned buffers and keeps nothing.
//
// # Problem spec
//
// A problem crosses as the address of 6 float64 values:
//
//	spec[0:6] = problem, l2, hidden, activation, intercept, classes
//
// problem 0 leastsquares, 1 logistic, 2 softmax, 3 mlp; activation the
// train.Activation (0 tanh, 1 relu; MLP only); intercept 0 (NoIntercept) or
// 1; classes the Dataset.Classes (0 for least squares' real targets, 2 for
// logistic, K for softmax and mlp).
//
// # Data
//
// X is the operand (xKind, xAddr, n, d) of kind 0 (float64: viewed in
// place, zero copy) or 1 (float32: widened to a float64 copy, since
// data.Dataset holds float64); y is the address of n float64 labels,
// viewed in place. Go builds a data.Dataset over them for the duration of
// the call; Dataset.Validate checks it (finite values, labels in range),
// and the caller must not modify X or y during the call.
//
// Weight vectors (w0, w, dst, wOut) are float64 buffers of the stated
// length, which Go checks against the problem's NumParams; index vectors
// are int64 buffers.

// Problem codes of spec[0].
const (
	probLeastSquares = 0
	probLogistic     = 1
	probSoftmax      = 2
	probMLP          = 3
)

// Buffer lengths.
const (
	specLen     = 6
	settingsLen = 10
	historyLen  = 13
	summaryLen  = 19
)

// problemSpec is a decoded spec buffer.
type problemSpec struct {
	problem, hidden, classes int
	l2                       float64
	act                      train.Activation
	intercept                bool
}

func readSpec(addr uintptr) (problemSpec, error) {
	v := outBuf(addr, specLen)
	var ints [4]int
	for i, f := range []struct {
		name string
		at   int
	}{{"problem code", 0}, {"hidden", 2}, {"activation code", 3}, {"classes", 5}} {
		k, err := intOf(f.name, v[f.at])
		if err != nil {
			return problemSpec{}, err
		}
		ints[i] = k
	}
	s := problemSpec{problem: ints[0], hidden: ints[1], act: train.Activation(ints[2]), classes: ints[3], l2: v[1], intercept: v[4] != 0}
	if s.classes < 0 {
		return problemSpec{}, paramErrorf("classes = %d, want ≥ 0", s.classes)
	}
	return s, nil
}

// build returns the problem of the spec over ds (ds.Classes is set here).
func (s problemSpec) build(ds *data.Dataset) (train.Problem, error) {
	ds.Classes = s.classes
	var opts []train.ProblemOption
	if !s.intercept {
		opts = append(opts, train.NoIntercept())
	}
	// Each case returns its own error: a failed constructor's typed nil
	// pointer must not become a non-nil Problem interface.
	switch s.problem {
	case probLeastSquares:
		p, err := train.NewLeastSquares(ds, s.l2, opts...)
		if err != nil {
			return nil, err
		}
		return p, nil
	case probLogistic:
		p, err := train.NewLogistic(ds, s.l2, opts...)
		if err != nil {
			return nil, err
		}
		return p, nil
	case probSoftmax:
		p, err := train.NewSoftmax(ds, s.l2, opts...)
		if err != nil {
			return nil, err
		}
		return p, nil
	case probMLP:
		p, err := train.NewMLP(ds, s.hidden, s.act, s.l2, opts...)
		if err != nil {
			return nil, err
		}
		return p, nil
	}
	return nil, paramErrorf("unknown problem code %d", s.problem)
}

// problem returns the spec's problem over the data (X, y); see the data
// layout above.
func problem(spec uintptr, xKind int, xAddr, yAddr uintptr, n, d int) (train.Problem, error) {
	s, err := readSpec(spec)
	if err != nil {
		return nil, err
	}
	if xKind != kindF64 && xKind != kindF32 {
		return nil, typeErrorf("X must be a float32 or float64 buffer (kind %d)", xKind)
	}
	x, err := viewBuffer("X", xKind, xAddr, n, d)
	if err != nil {
		return nil, err
	}
	y, err := viewBuffer("y", kindF64, yAddr, n, 1)
	if err != nil {
		return nil, err
	}
	xs := float64s(x)
	if xs == nil {
		xs = []float64{}
	}
	ys := y.f64
	if ys == nil {
		ys = []float64{}
	}
	return s.build(&data.Dataset{Name: "(X, y)", X: xs, Y: ys, N: n, D: d})
}

// shapeProblem returns the spec's problem over one all-zero example with d
// features and label 0: the problem's shape (NumParams) and initial
// weights do not depend on the data.
func shapeProblem(spec uintptr, d int) (train.Problem, error) {
	s, err := readSpec(spec)
	if err != nil {
		return nil, err
	}
	if d < 1 {
		return nil, fmt.Errorf("%w: n_features = %d", gdiv.ErrZeroDim, d)
	}
	return s.build(&data.Dataset{X: make([]float64, d), Y: []float64{0}, N: 1, D: d})
}

// weights views the caller's weight vector of wLen values at addr and
// checks its length against the problem's NumParams.
func weights(what string, p train.Problem, addr uintptr, wLen int) ([]float64, error) {
	if np := p.NumParams(); wLen != np {
		return nil, shapeErrorf("%s has %d values; the problem has %d parameters", what, wLen, np)
	}
	m, err := viewBuffer(what, kindF64, addr, wLen, 1)
	return m.f64, err
}

// finite returns an ErrNonFinite error naming the first NaN or Inf of v.
func finite(what string, v []float64) error {
	for j, x := range v {
		if math.IsNaN(x) || math.IsInf(x, 0) {
			return fmt.Errorf("%w: %s[%d] = %v", gdiv.ErrNonFinite, what, j, x)
		}
	}
	return nil
}

// indexList reads b int64 example indices at addr and checks that each is
// in [0, n) (SGDStep and PerExampleGrads panic otherwise).
func indexList(addr uintptr, b, n int) ([]int, error) {
	if b < 0 {
		return nil, shapeErrorf("indices: negative length %d", b)
	}
	if b > 0 && (addr == 0 || addr%8 != 0) {
		return nil, paramErrorf("indices: null or misaligned address %#x", addr)
	}
	idx := make([]int, b)
	if b == 0 {
		return idx, nil
	}
	src := unsafe.Slice((*int64)(unsafe.Add(nil, addr)), b)
	for k, v := range src {
		if v < 0 || v >= int64(n) {
			return nil, paramErrorf("indices[%d] = %d is outside [0, %d)", k, v, n)
		}
		idx[k] = int(v)
	}
	return idx, nil
}

// NumParams returns the number of parameters of the spec's problem with d
// features.
func NumParams(spec uintptr, d int) (_ int, err error) {
	defer guard(&err)
	p, err := shapeProblem(spec, d)
	if err != nil {
		return 0, err
	}
	return p.NumParams(), nil
}

// InitialWeights writes the spec's problem's initial weights for d features
// — Initializer.gdiv.SeededInitialWeights (the PCG stream train.InitStream):
// zeros for the convex problems, seeded Glorot/He normal weights with zero
// biases for the MLP — into the dstLen float64 values at dst, and returns
// NumParams.
func InitialWeights(spec uintptr, d int, seed uint64, dst uintptr, dstLen int) (_ int, err error) {
	defer guard(&err)
	p, err := shapeProblem(spec, d)
	if err != nil {
		return 0, err
	}
	out, err := weights("dst", p, dst, dstLen)
	if err != nil {
		return 0, err
	}
	copy(out, train.SeededInitialWeights(p, seed))
	return len(out), nil
}

// LossGrads writes the per-example losses f_i(w) into losses[0:b] and the
// per-example gradients ∇f_i(w) (Problem.LossGrad, the rows of
// train.PerExampleGrads) into grads[0:b·P], row-major, for i = indices[0],
// …, indices[b−1]; indices = 0 means every example (b must be n). It
// returns b.
func LossGrads(spec uintptr, xKind int, xAddr, yAddr uintptr, n, d int, w uintptr, wLen int,
	indices uintptr, b int, losses, grads uintptr) (_ int, err error) {
	defer guard(&err)
	p, err := problem(spec, xKind, xAddr, yAddr, n, d)
	if err != nil {
		return 0, err
	}
	wv, err := weights("w", p, w, wLen)
	if err != nil {
		return 0, err
	}
	if err := finite("w", wv); err != nil {
		return 0, err
	}
	var idx []int
	if indices == 0 {
		if b != n {
			return 0, shapeErrorf("indices = None means all %d examples, got length %d", n, b)
		}
		idx = make([]int, n)
		for i := range idx {
			idx[i] = i
		}
	} else if idx, err = indexList(indices, b, n); err != nil {
		return 0, err
	}
	if b == 0 {
		return 0, fmt.Errorf("%w: no example indices", gdiv.ErrEmpty)
	}
	np := p.NumParams()
	lo := outBuf(losses, b)
	g := outBuf(grads, b*np)
	for k, i := range idx {
		lo[k] = p.LossGrad(g[k*np:(k+1)*np:(k+1)*np], wv, i)
	}
	return b, nil
}

// Step writes train.SGDStep(dst, w, p, indices, lr, rule, radius) into the
// wLen float64 values at dst (rule 0 sum, 1 mean: train.SumStep, MeanStep;
// b int64 indices at indices). It returns b.
func Step(spec uintptr, xKind int, xAddr, yAddr uintptr, n, d int, w uintptr, wLen int,
	indices uintptr, b int, lr float64, rule int, radius float64, dst uintptr) (_ int, err error) {
	defer guard(&err)
	p, err := problem(spec, xKind, xAddr, yAddr, n, d)
	if err != nil {
		return 0, err
	}
	wv, err := weights("w", p, w, wLen)
	if err != nil {
		return 0, err
	}
	out, err := weights("dst", p, dst, wLen)
	if err != nil {
		return 0, err
	}
	idx, err := indexList(indices, b, n)
	if err != nil {
		return 0, err
	}
	return b, train.SGDStep(out, wv, p, idx, lr, train.StepRule(rule), radius)
}

// readSettings decodes the settings buffer,
//
//	settings[0:10] = lr, step, batch, steps, examples, sampling, radius,
//	                 estimator_beta, eval_every, lr_warmup_steps
//
// (step 0 sum, 1 mean; sampling 0 replacement, 1 shuffle: the values of
// train.SumStep, MeanStep, WithReplacement, Shuffle). SGD validates them.
func readSettings(addr uintptr) (train.SGDSettings, error) {
	v := outBuf(addr, settingsLen)
	var ints [7]int
	for i, f := range []struct {
		name string
		at   int
	}{{"step rule code", 1}, {"batch", 2}, {"steps", 3}, {"examples", 4}, {"sampling code", 5}, {"eval_every", 8}, {"lr_warmup_steps", 9}} {
		k, err := intOf(f.name, v[f.at])
		if err != nil {
			return train.SGDSettings{}, err
		}
		ints[i] = k
	}
	return train.SGDSettings{
		LR: v[0], Step: train.StepRule(ints[0]), Batch: ints[1], Steps: ints[2], Examples: ints[3],
		Sampling: train.Sampling(ints[4]), Radius: v[6], EstimatorBeta: v[7], EvalEvery: ints[5],
		LRWarmupSteps: ints[6],
	}, nil
}

// Train runs train.SGD on the spec's problem over (X, y) and writes the run
// into the caller's buffers. Arguments:
//
//	w0, w0Len         the initial weights (w0Len = NumParams); w0 = 0 means
//	                  train.SeededInitialWeights(p, seed)
//	settings          the settings buffer (see readSettings)
//	policy            a policy buffer (see policyLen), or 0 for a fixed batch
//	mech, ...         a mechanism as for MechanismApply, mech = −1 for none
//	seed              SGDSettings.Seed
//	wOut, wOutLen     the final weights (wOutLen = NumParams)
//	history, histCap  one row of 13 float64 per step, at most histCap rows:
//	                  step, examples, batch, lr, batch_loss, loss, evaluated,
//	                  m2, g, batch_bound, diversity, no_signal, has_estimate
//	                  (the Record fields, in WriteHistoryCSV's order)
//	indices, idxCap   when indices != 0, SGDSettings.RecordIndices is set
//	                  and the batches' example indices are written there,
//	                  concatenated (int64, at most idxCap); the history's
//	                  batch column splits them
//	summary           19 float64: steps, examples, initial_loss,
//	                  final_loss, the final smoothed estimate (batch, m2, g,
//	                  batch_bound, noise_scale, no_signal), the policy SGD
//	                  applied after its adjustments (8, zeros without one),
//	                  the number of indices written
//	progressFD        a file descriptor to print train.ProgressPrinter's
//	                  lines on (the caller's standard error), or −1 for none
//
// The caller sizes histCap and idxCap from the stopping rule; a run that
// does not fit is an [internal] error (nothing is written then). It
// returns the number of steps. SGD's errors (invalid settings, non-finite
// values naming the step) are returned as they are; the partial run is
// discarded.
func Train(spec uintptr, xKind int, xAddr, yAddr uintptr, n, d int, w0 uintptr, w0Len int,
	settings, policy uintptr, mech int, mechParam float64, mechLevels int, mechRescale bool, seed uint64,
	wOut uintptr, wOutLen int, history uintptr, histCap int, indices uintptr, idxCap int, summary uintptr, progressFD int) (_ int, err error) {
	defer guard(&err)
	p, err := problem(spec, xKind, xAddr, yAddr, n, d)
	if err != nil {
		return 0, err
	}
	out, err := weights("wOut", p, wOut, wOutLen)
	if err != nil {
		return 0, err
	}
	var start []float64
	if w0 == 0 {
		start = train.SeededInitialWeights(p, seed)
	} else if start, err = weights("w0", p, w0, w0Len); err != nil {
		return 0, err
	}
	s, err := readSettings(settings)
	if err != nil {
		return 0, err
	}
	if policy != 0 {
		pol, err := readPolicy(policy)
		if err != nil {
			return 0, err
		}
		s.Policy = &pol
	}
	if mech >= 0 {
		if s.Mechanism, err = mechanism(mech, mechParam, mechLevels, mechRescale); err != nil {
			return 0, err
		}
	}
	s.Seed = seed
	s.RecordIndices = indices != 0
	if progressFD >= 0 {
		s.Progress = train.ProgressPrinter(fdWriter(progressFD), s, n)
	}

	res, err := train.SGD(p, start, s)
	if err != nil {
		return 0, err
	}
	total := 0
	for _, b := range res.Batches {
		total += len(b)
	}
	if len(res.History) > histCap || total > idxCap {
		return 0, fmt.Errorf("gdiv: reference.train: %d steps and %d indices do not fit the buffers of %d and %d (a bug in the size bound)",
			len(res.History), total, histCap, idxCap)
	}
	copy(out, res.W)
	if len(res.History) > 0 {
		h := outBuf(history, len(res.History)*historyLen)
		for k, r := range res.History {
			o := h[k*historyLen : (k+1)*historyLen]
			o[0], o[1], o[2], o[3] = float64(r.Step), float64(r.Examples), float64(r.Batch), r.LR
			o[4], o[5], o[6] = r.BatchLoss, r.Loss, b2f(r.Evaluated)
			o[7], o[8], o[9], o[10] = r.M2, r.G, r.BatchBound, r.Diversity
			o[11], o[12] = b2f(r.NoSignal), b2f(r.HasEstimate)
		}
	}
	if total > 0 {
		dst := unsafe.Slice((*int64)(unsafe.Add(nil, indices)), total)
		k := 0
		for _, b := range res.Batches {
			for _, i := range b {
				dst[k] = int64(i)
				k++
			}
		}
	}
	o := outBuf(summary, summaryLen)
	o[0], o[1], o[2], o[3] = float64(res.Steps), float64(res.Examples), res.InitialLoss, res.FinalLoss
	writeEstimate(o[4:10], res.Estimate)
	clear(o[10:18])
	if res.Policy != nil {
		writePolicy(o[10:18], *res.Policy)
	}
	o[18] = float64(total)
	return res.Steps, nil
}
