package train

import (
	"bufio"
	"fmt"
	"io"
	"math"
	"math/bits"
	"math/rand/v2"
	"strconv"

	"github.com/gdiv/gdiv/gdiv"

	"gonum.org/v1/gonum/floats"
)

// The reference trainer: mini-batch SGD as the paper states it (eqs. 2–3),
// exact and deterministic, so that it can serve as ground truth for the
// framework integrations.

// StepRule, Sampling and their values are the core's (package gdiv, where
// the Controller that decides each step uses them), aliased here so that
// trainer settings read as before.
type (
	StepRule = gdiv.StepRule
	Sampling = gdiv.Sampling
)

const (
	SumStep         = gdiv.SumStep
	MeanStep        = gdiv.MeanStep
	WithReplacement = gdiv.WithReplacement
	Shuffle         = gdiv.Shuffle
)

// ParseStepRule is gdiv.ParseStepRule.
func ParseStepRule(s string) (StepRule, error) { return gdiv.ParseStepRule(s) }

// ParseSampling is gdiv.ParseSampling.
func ParseSampling(s string) (Sampling, error) { return gdiv.ParseSampling(s) }

// SGDSamplingStream is the PCG stream (second argument of rand.NewPCG)
// of the batch indices (both samplings), seeded by SGDSettings.Seed. The
// mechanism's draws of step k come from rand.NewPCG(StepSeed(Seed, k), 0),
// the controller's step seeds — the stream every adapter uses (a Python
// full-mode monitor applies the mechanism with the same seed per step) —
// so adding a mechanism does not change the batches.
const SGDSamplingStream uint64 = 0x5347445f53414d50 // "SGD_SAMP"

// SGDSettings configures SGD. The zero value of every field except LR, a
// stopping rule (Steps or Examples) and, without a Policy, Batch is a
// sensible default.
type SGDSettings struct {
	// LR is the step size γ > 0 (the per-example step for SumStep, the
	// step of the mean gradient for MeanStep).
	LR float64
	// Step is the step normalization; the zero value is SumStep, the
	// paper's.
	Step StepRule

	// Batch is the batch size when Policy is nil (required, ≥ 1), and the
	// initial batch size with a Policy (0 means the smallest batch the
	// policy allows; otherwise it must be one the policy allows).
	Batch int
	// Policy, when non-nil, chooses the batch of each step after the first
	// from the smoothed estimate of the previous steps:
	// B_{k+1} = Policy.Next(B_k, smoothed estimate after step k, k − 1).
	// SGD adjusts a copy of it (reported in SGDResult.Policy): a MinBatch
	// below 2 becomes 2, since the estimate that drives the policy needs two
	// examples per batch, and a zero MaxBatch becomes the number of examples
	// n. With Shuffle, MaxBatch must not exceed n.
	//
	// With MeanStep the step size of a batch B is ScaleLR(Policy.LR, LR,
	// B₀, B), B₀ the initial batch. With SumStep Policy.LR is ignored: the
	// sum-step already keeps the per-example step γ fixed at every batch
	// size, which is what LRLinear does for a mean-reduced loss.
	Policy *gdiv.BatchSizePolicy
	// LRWarmupSteps W ramps the MeanStep step size over W steps after each
	// batch change the policy decides (gdiv.ControllerSettings.LRWarmupSteps,
	// after Goyal et al. 2017); 0 or 1 means none. SumStep ignores it.
	LRWarmupSteps int

	// Steps and Examples stop the run at whichever is reached first: after
	// Steps steps, or once at least Examples per-example gradients have
	// been computed (the last batch is not truncated). 0 means unused; at
	// least one is required.
	Steps    int
	Examples int

	// Sampling is WithReplacement (the zero value, the paper's) or Shuffle.
	Sampling Sampling
	// Radius > 0 projects w onto the ball {‖w‖ ≤ Radius} after each step
	// (projected SGD, eq. 3). 0 or +Inf means no projection. The initial
	// point is not projected.
	Radius float64
	// Mechanism, when non-nil, is a diversity-inducing mechanism applied to
	// the batch's per-example gradients before they are summed into the
	// step; the per-batch estimate is that of the modified gradients.
	Mechanism gdiv.Mechanism
	// Seed seeds all randomness: the indices come from
	// rand.New(rand.NewPCG(Seed, SGDSamplingStream)) and step k's mechanism
	// draws from rand.New(rand.NewPCG(gdiv.StepSeed(Seed, k), 0)).
	Seed uint64
	// EstimatorBeta is the Estimator.Beta in [0, 1) that smooths the
	// per-batch estimates (ratio of EMAs). 0 means no smoothing: the
	// recorded estimate and the policy's input are those of the last batch.
	EstimatorBeta float64
	// EvalEvery k > 0 evaluates the full training loss F(w) every k steps
	// and after the last one. 0 means once per epoch at the initial batch
	// size, k = ⌈n/B₀⌉; a negative value evaluates only after the last
	// step.
	EvalEvery int
	// RecordIndices keeps the example indices of every batch in
	// SGDResult.Batches, so that another implementation (PyTorch, through
	// SGDStep) can replay the exact run.
	RecordIndices bool
	// Progress, when non-nil, is called with each step's Record right
	// after it is appended to the history.
	Progress func(Record)
}

// Record is the state of an SGD run after one step.
type Record struct {
	Step     int     // 1-based index of the step
	Examples int     // per-example gradients computed so far, this step included
	Batch    int     // batch size B of this step
	LR       float64 // step size used in this step

	// BatchLoss is the mean of f_i(w) over the batch, at the weights before
	// the step.
	BatchLoss float64
	// Loss is the full training loss F(w) from the most recent evaluation
	// (SGDSettings.EvalEvery), carried forward between evaluations;
	// Evaluated reports that it was computed after this step. Before the
	// first evaluation it is the initial loss F(w₀).
	Loss      float64
	Evaluated bool

	// M2, G, BatchBound and NoSignal are the smoothed estimate after this
	// step (see Estimate): BatchBound is B̂_S, +Inf with NoSignal.
	// Diversity is B̂_S/n. HasEstimate is false while no batch has had
	// two examples (then BatchBound is +Inf and NoSignal is set).
	M2          float64
	G           float64
	BatchBound  float64
	Diversity   float64
	NoSignal    bool
	HasEstimate bool
}

// SGDResult is the outcome of SGD.
type SGDResult struct {
	// W is the final weight vector (after an error: the last finite one).
	W []float64
	// History has one Record per completed step.
	History []Record
	// Batches[k] holds the example indices of step k + 1, when
	// SGDSettings.RecordIndices is set.
	Batches [][]int
	// Steps and Examples are the number of steps and of per-example
	// gradients computed.
	Steps, Examples int
	// InitialLoss is F(w₀); FinalLoss is F(W) after the last step.
	InitialLoss, FinalLoss float64
	// Estimate is the final smoothed estimate.
	Estimate gdiv.Estimate
	// Policy is the policy that SGD applied, after its adjustments to
	// MinBatch and MaxBatch (nil without a policy).
	Policy *gdiv.BatchSizePolicy
}

// SGD runs mini-batch SGD on p from w0 (eqs. 2–3 of the paper):
//
//	w_{k+1} = Π(w_k − γ_k Σ_{i∈I_k} g_i),   g_i = ∇f_i(w_k) (or its DIM surrogate),
//
// with γ_k = LR for SumStep and LR/B_k for MeanStep, I_k the k-th batch and
// Π the projection onto the ball of radius Radius. The per-example
// gradients of a batch are computed one at a time (each replaced by its
// mechanism draw, if any) and folded into Σ g_i and Σ‖g_i‖² while still in
// cache, so memory is O(d) whatever the batch size; the two sums give the
// per-batch estimate — EstimateBatch with replacement, EstimateBatchFinite
// with Shuffle — which an Estimator smooths. The smoothed estimate is
// recorded and drives the Policy. The mechanism's Apply is called once per
// example (a 1×d buffer).
//
// Problem.LossGrad must overwrite its grad argument, as the Problem
// contract says; SGD does not clear it between examples.
//
// The run is a deterministic function of p, w0 and s: the same inputs give
// bit-identical weights and history. The sampled indices do not depend on
// the mechanism. Index draws use Lemire's multiply-shift rejection method
// on the PCG's Uint64 output, and Shuffle a Fisher–Yates shuffle from the
// last position down, written here rather than taken from math/rand/v2's
// IntN and Shuffle so that runs do not change with the Go version.
//
// It returns an error wrapping ErrParam, ErrShape, ErrEmpty or ErrZeroDim
// for invalid settings or shapes (naming the setting), and an error
// wrapping ErrNonFinite or ErrOverflow, naming the step, when a loss, a
// gradient, the weights or F(w) become non-finite (usually a step size
// that is too large); the result then holds the run up to the last
// completed step. It panics if p is nil.
func SGD(p Problem, w0 []float64, s SGDSettings) (SGDResult, error) {
	if p == nil {
		panic("gdiv: SGD: nil Problem")
	}
	n, d := p.NumExamples(), p.NumParams()
	ctrl, err := checkSGD(n, d, w0, &s)
	if err != nil {
		return SGDResult{}, err
	}
	batch := ctrl.Batch()
	res := SGDResult{Policy: ctrl.Policy()}
	w := append([]float64(nil), w0...)
	wNext := make([]float64, d)
	res.W = w

	res.InitialLoss = FullLoss(p, nil, w)
	if !gdiv.IsFinite(res.InitialLoss) {
		return res, fmt.Errorf("%w: initial training loss F(w0) = %v", gdiv.ErrNonFinite, res.InitialLoss)
	}
	evalEvery := s.EvalEvery
	if evalEvery == 0 {
		evalEvery = (n + batch - 1) / batch
	}

	t := sgdTrainer{
		p: p, n: n, d: d, s: &s,
		sampRng: rand.New(rand.NewPCG(s.Seed, SGDSamplingStream)),
		mechSrc: rand.NewPCG(0, 0),
		sum:     make([]float64, d),
		row:     make([]float64, d),
		ctrl:    ctrl,
	}
	t.mechRng = rand.New(t.mechSrc)
	if s.Sampling == Shuffle {
		t.perm = make([]int, n)
		t.pos = n // the first draw starts an epoch
	}

	loss := res.InitialLoss
	examples := 0
	for k := 1; ; k++ {
		lr := ctrl.ScaleLR(s.LR, batch) // the policy's LR rule for MeanStep, s.LR otherwise
		idx := t.sample(batch)
		batchLoss, err := t.step(wNext, w, idx, lr, k)
		if err != nil {
			return res, err
		}
		done := (s.Steps > 0 && k >= s.Steps) || (s.Examples > 0 && examples+batch >= s.Examples)
		evaluated := done || (evalEvery > 0 && k%evalEvery == 0)
		if evaluated {
			loss = FullLoss(p, nil, wNext)
			if !gdiv.IsFinite(loss) {
				return res, fmt.Errorf("%w: training loss F(w) = %v at step %d; the iterates are diverging (lower the learning rate)",
					gdiv.ErrNonFinite, loss, k)
			}
		}
		w, wNext = wNext, w
		res.W = w
		examples += batch
		res.Steps, res.Examples = k, examples
		if s.RecordIndices {
			res.Batches = append(res.Batches, append([]int(nil), idx...))
		}
		sm := ctrl.Smoothed()
		res.Estimate = sm
		rec := Record{
			Step: k, Examples: examples, Batch: batch, LR: lr,
			BatchLoss: batchLoss, Loss: loss, Evaluated: evaluated,
			M2: sm.M2, G: sm.G, BatchBound: sm.BatchBound, Diversity: sm.BatchBound / float64(n),
			NoSignal: sm.NoSignal, HasEstimate: ctrl.EstimatorSteps() > 0,
		}
		res.History = append(res.History, rec)
		if s.Progress != nil {
			s.Progress(rec)
		}
		if done {
			res.FinalLoss = loss
			return res, nil
		}
		batch = ctrl.Batch() // the policy's decision (the same batch without a policy)
	}
}

// checkSGD validates the settings and returns the controller of the run:
// the policy (adjusted by NewController: MinBatch ≥ 2, MaxBatch 0 → n), the
// initial batch, the estimator and, for MeanStep, the policy's LR rule.
func checkSGD(n, d int, w0 []float64, s *SGDSettings) (*gdiv.Controller, error) {
	switch {
	case n <= 0:
		return nil, fmt.Errorf("%w: the problem has %d examples", gdiv.ErrEmpty, n)
	case d <= 0:
		return nil, fmt.Errorf("%w: the problem has %d parameters", gdiv.ErrZeroDim, d)
	case len(w0) != d:
		return nil, fmt.Errorf("%w: len(w0) = %d, but the problem has %d parameters", gdiv.ErrShape, len(w0), d)
	}
	if err := gdiv.NonFiniteAt(w0, d, "w0"); err != nil {
		return nil, err
	}
	switch {
	case !(s.LR > 0) || math.IsInf(s.LR, 1):
		return nil, paramErr("SGD learning rate = %v, want a finite lr > 0", s.LR)
	case !s.Step.Valid():
		return nil, paramErr("SGD step rule %v, want SumStep or MeanStep", s.Step)
	case !s.Sampling.Valid():
		return nil, paramErr("SGD sampling %v, want WithReplacement or Shuffle", s.Sampling)
	case s.Steps < 0 || s.Examples < 0:
		return nil, paramErr("SGD steps = %d, examples = %d, want ≥ 0", s.Steps, s.Examples)
	case s.Steps == 0 && s.Examples == 0:
		return nil, paramErr("SGD has no stopping rule: set Steps or Examples")
	case s.Batch < 0:
		return nil, paramErr("SGD batch = %d, want ≥ 1", s.Batch)
	case s.Policy == nil && s.Batch == 0:
		return nil, paramErr("SGD batch = 0: set Batch (≥ 1) or a Policy")
	case !(s.Radius >= 0):
		return nil, paramErr("SGD radius = %v, want ≥ 0 (0 means no projection)", s.Radius)
	case !(s.EstimatorBeta >= 0 && s.EstimatorBeta < 1):
		return nil, paramErr("SGD estimator beta = %v, want 0 ≤ beta < 1", s.EstimatorBeta)
	case s.Policy == nil && s.Sampling == Shuffle && s.Batch > n:
		return nil, paramErr("SGD batch = %d exceeds the %d examples, which Shuffle sampling cannot draw without replacement", s.Batch, n)
	}
	if s.Mechanism != nil {
		if err := s.Mechanism.Validate(); err != nil {
			return nil, fmt.Errorf("SGD mechanism %s: %w", s.Mechanism.Name(), err)
		}
	}
	// SumStep ignores the policy's LR rule: the sum-step already keeps the
	// per-example step fixed at every batch size.
	lr := gdiv.LRNone
	if s.Policy != nil && s.Step == MeanStep {
		lr = s.Policy.LR
	}
	ctrl, err := gdiv.NewController(gdiv.ControllerSettings{
		Policy: s.Policy, Batch: s.Batch, DatasetSize: n, Sampling: s.Sampling,
		EstimatorBeta: s.EstimatorBeta, Step: s.Step, LR: lr, Seed: s.Seed,
		LRWarmupSteps: s.LRWarmupSteps,
	})
	if err != nil {
		return nil, fmt.Errorf("SGD: %w", err)
	}
	return ctrl, nil
}

// sgdTrainer holds the buffers and random state of one SGD run.
type sgdTrainer struct {
	p    Problem
	n, d int
	s    *SGDSettings

	sampRng *rand.Rand
	mechSrc *rand.PCG // reseeded each step with the controller's step seed
	mechRng *rand.Rand
	perm    []int // Shuffle: the current epoch's permutation
	pos     int   // Shuffle: next position in perm

	idx  []int
	row  []float64 // one per-example gradient
	sum  []float64 // Σ of the batch's per-example gradients
	ctrl *gdiv.Controller
}

// sample returns the indices of the next batch of size b, in t.idx.
func (t *sgdTrainer) sample(b int) []int {
	t.idx = growInts(t.idx, b)
	if t.s.Sampling == WithReplacement {
		for j := range t.idx {
			t.idx[j] = uniformIndex(t.sampRng, t.n)
		}
		return t.idx
	}
	for j := range t.idx {
		if t.pos == t.n {
			for i := range t.perm {
				t.perm[i] = i
			}
			for i := t.n - 1; i > 0; i-- {
				k := uniformIndex(t.sampRng, i+1)
				t.perm[i], t.perm[k] = t.perm[k], t.perm[i]
			}
			t.pos = 0
		}
		t.idx[j] = t.perm[t.pos]
		t.pos++
	}
	return t.idx
}

// step computes the per-example gradients of the batch idx at w (with the
// mechanism applied), updates the estimator and writes the stepped (and
// projected) weights into dst. It returns the mean batch loss. k is the
// 1-based step, for error messages.
func (t *sgdTrainer) step(dst, w []float64, idx []int, lr float64, k int) (float64, error) {
	b := len(idx)
	where := fmt.Sprintf("at step %d, ", k)
	if t.s.Mechanism != nil {
		t.mechSrc.Seed(t.ctrl.StepSeed(k), 0)
	}
	lossSum, sumSq, err := sumGrads(t.sum, t.row, t.p, w, idx, t.s.Mechanism, t.mechRng, where)
	if err != nil {
		return 0, fmt.Errorf("%w; the iterates may be diverging (lower the learning rate)", err)
	}
	// The controller estimates (b ≥ 2), smooths and decides the next batch.
	dec, err := t.ctrl.Observe(gdiv.Observation{Batch: b, SumSqNorms: sumSq, SqNormBatchGrad: gdiv.SqNorm(t.sum)})
	if err == nil {
		err = dec.Err
	}
	if err != nil {
		return 0, fmt.Errorf("%w (per-batch estimate at step %d)", err, k)
	}
	if err := applyStep(dst, w, t.sum, stepScale(lr, t.s.Step, b), t.s.Radius); err != nil {
		return 0, fmt.Errorf("%w at step %d; the iterates are diverging (lower the learning rate)", err, k)
	}
	return lossSum / float64(b), nil
}

// sumGrads computes the per-example gradients g_i = ∇f_i(w), i ∈ idx, one
// at a time into row (len d), replaces each by its mechanism draw when mech
// is non-nil, and adds it into sum (overwritten first; rows are added in
// the order of idx, with the statistics kernel). It returns Σ f_i(w) and
// Σ‖g_i‖². Working one row at a time keeps the row in cache for the
// statistics and needs O(d) memory whatever the batch size. Errors wrap
// ErrNonFinite (naming the example and parameter; checked before the
// mechanism, which could hide a NaN) or ErrOverflow; where prefixes their
// description.
func sumGrads(sum, row []float64, p Problem, w []float64, idx []int, mech gdiv.Mechanism, rng *rand.Rand, where string) (lossSum, sumSq float64, err error) {
	clear(sum)
	d := len(row)
	for _, i := range idx {
		f := p.LossGrad(row, w, i)
		if !gdiv.IsFinite(f) {
			return 0, 0, fmt.Errorf("%w: %sloss of example %d is %v", gdiv.ErrNonFinite, where, i, f)
		}
		lossSum += f
		if mech != nil {
			if j := firstNonFinite(row); j >= 0 {
				return 0, 0, fmt.Errorf("%w: %sgradient of example %d is %v at parameter %d", gdiv.ErrNonFinite, where, i, row[j], j)
			}
			if err := mech.Apply(row, 1, d, rng); err != nil {
				return 0, 0, err
			}
		}
		sq := gdiv.AccumulateRows(sum, row, 1, d)
		if !gdiv.IsFinite(sq) {
			if j := firstNonFinite(row); j >= 0 {
				return 0, 0, fmt.Errorf("%w: %sgradient of example %d is %v at parameter %d", gdiv.ErrNonFinite, where, i, row[j], j)
			}
			return 0, 0, fmt.Errorf("%w: %s‖g_i‖² of example %d", gdiv.ErrOverflow, where, i)
		}
		sumSq += sq
	}
	return lossSum, sumSq, nil
}

// SGDStep writes into dst one mini-batch SGD step from w on the examples
// idx (repeats allowed, each counted as often as it appears):
//
//	dst = Π(w − γ Σ_{i∈idx} ∇f_i(w)),   γ = lr (SumStep) or lr/len(idx) (MeanStep),
//
// Π the projection onto {‖v‖ ≤ radius} (none when radius is 0 or +Inf).
// The gradients are summed in the order of idx, exactly as SGD sums them
// (without a mechanism, replaying SGDResult.Batches through SGDStep
// reproduces SGD's weights bit for bit). dst may be w.
//
// It returns ErrEmpty for an empty idx, ErrParam for lr not finite and
// > 0, an invalid rule or a negative or NaN radius, ErrNonFinite naming the
// example for a non-finite loss or gradient, or for non-finite weights, and
// ErrOverflow when the squared norm of a gradient overflows; dst is then
// unspecified. It panics if p is nil, len(w) or
// len(dst) differs from p.NumParams(), or an index is outside
// [0, p.NumExamples()).
func SGDStep(dst, w []float64, p Problem, idx []int, lr float64, rule StepRule, radius float64) error {
	if p == nil {
		panic("gdiv: SGDStep: nil Problem")
	}
	d, n := p.NumParams(), p.NumExamples()
	if len(w) != d || len(dst) != d {
		panic(fmt.Sprintf("gdiv: SGDStep: len(w) = %d, len(dst) = %d, want NumParams = %d", len(w), len(dst), d))
	}
	for _, i := range idx {
		if i < 0 || i >= n {
			panic(fmt.Sprintf("gdiv: SGDStep: example index %d outside [0, %d)", i, n))
		}
	}
	switch {
	case len(idx) == 0:
		return fmt.Errorf("%w: SGDStep needs at least one example index", gdiv.ErrEmpty)
	case !(lr > 0) || math.IsInf(lr, 1):
		return paramErr("SGDStep learning rate = %v, want a finite lr > 0", lr)
	case !rule.Valid():
		return paramErr("SGDStep step rule %v, want SumStep or MeanStep", rule)
	case !(radius >= 0):
		return paramErr("SGDStep radius = %v, want ≥ 0 (0 means no projection)", radius)
	}
	sum := make([]float64, d)
	if _, _, err := sumGrads(sum, make([]float64, d), p, w, idx, nil, nil, ""); err != nil {
		return err
	}
	return applyStep(dst, w, sum, stepScale(lr, rule, len(idx)), radius)
}

// stepScale returns the factor γ of the summed gradient.
func stepScale(lr float64, rule StepRule, b int) float64 {
	if rule == MeanStep {
		return lr / float64(b)
	}
	return lr
}

// applyStep writes dst = Π(w − scale·sum), Π the projection onto the ball
// of the given radius (none for 0 or +Inf). dst may be w. It returns an
// ErrNonFinite error naming the first non-finite weight.
func applyStep(dst, w, sum []float64, scale, radius float64) error {
	for j, g := range sum {
		dst[j] = w[j] - scale*g
	}
	sq := gdiv.SqNorm(dst)
	if !gdiv.IsFinite(sq) {
		if j := firstNonFinite(dst); j >= 0 {
			return fmt.Errorf("%w: weight %d is %v after the step", gdiv.ErrNonFinite, j, dst[j])
		}
	}
	if radius > 0 && !math.IsInf(radius, 1) && sq > radius*radius {
		nrm := math.Sqrt(sq)
		if !gdiv.IsFinite(nrm) { // finite weights whose squared norm overflows
			nrm = floats.Norm(dst, 2)
		}
		floats.Scale(radius/nrm, dst)
	}
	return nil
}

// firstNonFinite returns the index of the first NaN or ±Inf in v, or −1.
func firstNonFinite(v []float64) int {
	for j, x := range v {
		if !gdiv.IsFinite(x) {
			return j
		}
	}
	return -1
}

// uniformIndex returns a uniform integer in [0, n), n ≥ 1, from rng's
// Uint64 output by Lemire's multiply-shift method with rejection
// (unbiased).
func uniformIndex(rng *rand.Rand, n int) int {
	un := uint64(n)
	hi, lo := bits.Mul64(rng.Uint64(), un)
	if lo < un {
		thresh := -un % un
		for lo < thresh {
			hi, lo = bits.Mul64(rng.Uint64(), un)
		}
	}
	return int(hi)
}

func growInts(s []int, n int) []int {
	if cap(s) >= n {
		return s[:n]
	}
	return make([]int, n)
}

// historyHeader is the header of WriteHistoryCSV, in the project's
// vocabulary.
const historyHeader = "step,examples,batch,lr,batch_loss,loss,evaluated,m2,g,batch_bound,diversity,no_signal,has_estimate"

// WriteHistoryCSV writes the records as CSV with a header line (step,
// examples, batch, lr, batch_loss, loss, evaluated, m2, g, batch_bound,
// diversity, no_signal, has_estimate). Floats are written in the shortest
// form that reads back exactly (strconv 'g', -1; infinities as +Inf),
// booleans as true/false, so equal histories give identical bytes.
func WriteHistoryCSV(w io.Writer, history []Record) error {
	bw := bufio.NewWriter(w)
	bw.WriteString(historyHeader)
	bw.WriteByte('\n')
	var buf []byte
	for _, r := range history {
		buf = buf[:0]
		buf = strconv.AppendInt(buf, int64(r.Step), 10)
		buf = append(buf, ',')
		buf = strconv.AppendInt(buf, int64(r.Examples), 10)
		buf = append(buf, ',')
		buf = strconv.AppendInt(buf, int64(r.Batch), 10)
		for _, v := range []float64{r.LR, r.BatchLoss, r.Loss} {
			buf = append(buf, ',')
			buf = strconv.AppendFloat(buf, v, 'g', -1, 64)
		}
		buf = append(buf, ',')
		buf = strconv.AppendBool(buf, r.Evaluated)
		for _, v := range []float64{r.M2, r.G, r.BatchBound, r.Diversity} {
			buf = append(buf, ',')
			buf = strconv.AppendFloat(buf, v, 'g', -1, 64)
		}
		buf = append(buf, ',')
		buf = strconv.AppendBool(buf, r.NoSignal)
		buf = append(buf, ',')
		buf = strconv.AppendBool(buf, r.HasEstimate)
		buf = append(buf, '\n')
		bw.Write(buf)
	}
	return bw.Flush()
}
