package pybridge

import (
	"math"

	"github.com/gdiv/gdiv/gdiv"
)

// A gdiv.Controller crosses as two float64 buffers owned by the caller
// (the Python Controller keeps them): its settings, read by every call, and
// its state, read and written back by every call. Go keeps nothing between
// calls, so checkpoints are plain numbers and nothing can leak. Integers are
// exact float64 values; the 64-bit seeds cross as two 32-bit halves.
//
//	cfg[0:8]   the policy (policyLen layout)     cfg[8]  1 with a policy, else 0
//	cfg[9]     initial batch (0: unknown)         cfg[10] dataset size (0: unknown)
//	cfg[11]    sampling (0 replacement, 1 shuffle) cfg[12] estimator beta
//	cfg[13]    step rule (0 sum, 1 mean)           cfg[14] LR rule (0 none, 1 linear, 2 sqrt)
//	cfg[15]    Langevin std (0: none)              cfg[16:18] seed, high and low halves
//	cfg[18]    cadence: measure every k steps (0, 1: every step)
//	cfg[19]    1 for the adaptive cadence           cfg[20] its max interval (0: 16)
//	cfg[21]    max LR factor (0: no cap)           cfg[22] world size (0, 1: one worker)
//	cfg[23]    LR warm-up steps (0, 1: none)
//
//	state[0:5]  estimator state (stateLen layout)
//	state[5:10] batch, steps, examples, decisions, first batch
//	state[10:12] the seed of the next step's mechanism draws (StepSeed), written by Go
//	state[12:14] the cadence's interval and steps to wait before the next measured step
//	state[14:16] the LR warm-up: the factor it ramps from, its steps left (0, 0: none)
//
//	in[0:12]  batch, sum_sq_norms, sq_norm_batch_grad, mean (0/1), norms scale,
//	          grad scale, b_small, sq_norm_small, dim, noise_dot, noise_sq_norm,
//	          unmeasured (0/1)
//
//	out[0:7]   step, batch, next batch, lr factor, noise std, sum_sq_norms, sq_norm_of_sum
//	out[7:13]  the per-batch estimate (estimateLen layout)
//	out[13:19] the smoothed estimate
//	out[19]    diversity (NaN: unknown)             out[20] skip code (gdiv.Skip)
//	out[21]    1 if the cadence measures the next step
const (
	ctrlCfgLen   = 24
	ctrlStateLen = 16
	ctrlInLen    = 12
	ctrlOutLen   = 22
)

func splitSeed(o []float64, s uint64) { o[0], o[1] = float64(s>>32), float64(s&0xffffffff) }

func joinSeed(v []float64, what string) (uint64, error) {
	hi, err := intOf(what+" (high half)", v[0])
	if err != nil {
		return 0, err
	}
	lo, err := intOf(what+" (low half)", v[1])
	if err != nil {
		return 0, err
	}
	if hi < 0 || hi > math.MaxUint32 || lo < 0 || lo > math.MaxUint32 {
		return 0, paramErrorf("%s halves %v, %v outside [0, 2^32)", what, v[0], v[1])
	}
	return uint64(hi)<<32 | uint64(lo), nil
}

// readController builds the controller of the settings at cfg.
func readController(cfg uintptr) (*gdiv.Controller, error) {
	v := outBuf(cfg, ctrlCfgLen)
	var ints [11]int
	for i, f := range []struct {
		name string
		at   int
	}{{"has_policy", 8}, {"batch_size", 9}, {"dataset_size", 10}, {"sampling", 11}, {"step", 13}, {"lr_rule", 14},
		{"measure_every", 18}, {"measure_auto", 19}, {"max_measure_every", 20}, {"world_size", 22}, {"lr_warmup_steps", 23}} {
		k, err := intOf(f.name, v[f.at])
		if err != nil {
			return nil, &gdiv.FieldError{Field: f.name, Err: err}
		}
		ints[i] = k
	}
	seed, err := joinSeed(v[16:18], "seed")
	if err != nil {
		return nil, &gdiv.FieldError{Field: "seed", Err: err}
	}
	s := gdiv.ControllerSettings{
		Batch: ints[1], DatasetSize: ints[2], Sampling: gdiv.Sampling(ints[3]),
		EstimatorBeta: v[12], Step: gdiv.StepRule(ints[4]), LR: gdiv.LRRule(ints[5]),
		LangevinStd: v[15], Seed: seed, MaxLRFactor: v[21], WorldSize: ints[9], LRWarmupSteps: ints[10],
		Cadence: gdiv.Cadence{Every: ints[6], Auto: ints[7] != 0, MaxEvery: ints[8]},
	}
	if ints[0] != 0 {
		p, err := readPolicy(cfg)
		if err != nil {
			return nil, err
		}
		s.Policy = &p
	}
	return gdiv.NewController(s)
}

// readCtrlState returns the controller state at addr.
func readCtrlState(addr uintptr) (gdiv.ControllerState, error) {
	est, err := readState(addr)
	if err != nil {
		return gdiv.ControllerState{}, &gdiv.FieldError{Field: "estimator", Err: err}
	}
	v := outBuf(addr, ctrlStateLen)
	var ints [8]int
	for i, f := range []struct {
		name string
		at   int
	}{{"batch", 5}, {"steps", 6}, {"examples", 7}, {"decisions", 8}, {"first_batch", 9}, {"interval", 12}, {"wait", 13}, {"ramp_left", 15}} {
		k, err := intOf(f.name, v[f.at])
		if err != nil {
			return gdiv.ControllerState{}, &gdiv.FieldError{Field: f.name, Err: err}
		}
		ints[i] = k
	}
	return gdiv.ControllerState{Estimator: est, Batch: ints[0], Steps: ints[1], Examples: ints[2], Decisions: ints[3], FirstBatch: ints[4],
		Interval: ints[5], Wait: ints[6], RampFrom: v[14], RampLeft: ints[7]}, nil
}

func writeCtrlState(addr uintptr, c *gdiv.Controller) {
	st := c.State()
	o := outBuf(addr, ctrlStateLen)
	e := st.Estimator
	o[0], o[1], o[2], o[3], o[4] = e.Beta, float64(e.Steps), e.EMAM2, e.EMAG, e.Weight
	o[5], o[6], o[7], o[8], o[9] = float64(st.Batch), float64(st.Steps), float64(st.Examples), float64(st.Decisions), float64(st.FirstBatch)
	splitSeed(o[10:12], c.StepSeed(st.Steps+1))
	o[12], o[13] = float64(st.Interval), float64(st.Wait)
	o[14], o[15] = st.RampFrom, float64(st.RampLeft)
}

// ControllerInit validates the settings at cfg, writes the initial state
// to state and, with a policy, the adjusted policy (policyLen layout) to
// policyOut. It returns the initial batch (0: unknown). Errors are
// [param:FIELD] naming the setting.
func ControllerInit(cfg, state, policyOut uintptr) (_ int, err error) {
	defer guard(&err)
	c, err := readController(cfg)
	if err != nil {
		return 0, err
	}
	if p := c.Policy(); p != nil {
		writePolicy(outBuf(policyOut, policyLen), *p)
	}
	writeCtrlState(state, c)
	return c.Batch(), nil
}

// ControllerSetState validates the state at state for the settings at cfg
// (as gdiv.Controller.SetState does) and rewrites it in canonical form
// (the next step's seed included). A bad state is an error naming the
// field, and the buffer is then unchanged. It returns the batch to use
// next.
func ControllerSetState(cfg, state uintptr) (_ int, err error) {
	defer guard(&err)
	c, err := readController(cfg)
	if err != nil {
		return 0, err
	}
	st, err := readCtrlState(state)
	if err != nil {
		return 0, err
	}
	if err := c.SetState(st); err != nil {
		return 0, err
	}
	writeCtrlState(state, c)
	return c.Batch(), nil
}

// ControllerObserve is one measured step: gdiv.Controller.Observe of the
// observation at in, for the controller of cfg in the state at state
// (updated in place), with the decision written to out. It returns the
// skip code (0: estimated). On error the state is unchanged.
func ControllerObserve(cfg, state, in, out uintptr) (_ int, err error) {
	defer guard(&err)
	c, err := readController(cfg)
	if err != nil {
		return 0, err
	}
	st, err := readCtrlState(state)
	if err != nil {
		return 0, err
	}
	if err := c.SetState(st); err != nil {
		return 0, err
	}
	v := outBuf(in, ctrlInLen)
	var ints [5]int
	for i, f := range []struct {
		name string
		at   int
	}{{"batch", 0}, {"mean", 3}, {"b_small", 6}, {"dim", 8}, {"unmeasured", 11}} {
		k, err := intOf(f.name, v[f.at])
		if err != nil {
			return 0, &gdiv.FieldError{Field: f.name, Err: err}
		}
		ints[i] = k
	}
	d, err := c.Observe(gdiv.Observation{
		Batch: ints[0], SumSqNorms: v[1], SqNormBatchGrad: v[2], Mean: ints[1] != 0,
		NormsScale: v[4], GradScale: v[5], BSmall: ints[2], SqNormSmall: v[7],
		Dim: ints[3], NoiseDot: v[9], NoiseSqNorm: v[10], Unmeasured: ints[4] != 0,
	})
	if err != nil {
		return 0, err
	}
	o := outBuf(out, ctrlOutLen)
	o[0], o[1], o[2], o[3] = float64(d.Step), float64(d.Batch), float64(d.NextBatch), d.LRFactor
	o[4], o[5], o[6] = d.NoiseStd, d.SumSqNorms, d.SqNormOfSum
	writeEstimate(o[7:13], d.BatchEstimate)
	writeEstimate(o[13:19], d.Smoothed)
	o[19], o[20] = d.Diversity, float64(d.Skipped)
	o[21] = 0
	if d.MeasureNext {
		o[21] = 1
	}
	writeCtrlState(state, c)
	return int(d.Skipped), nil
}

// ControllerStepSeed returns gdiv.StepSeed(seed, k), seed = hi·2^32 + lo,
// as two 32-bit halves in out[0:2]. It returns 0.
func ControllerStepSeed(hi, lo float64, k int, out uintptr) (_ int, err error) {
	defer guard(&err)
	seed, err := joinSeed([]float64{hi, lo}, "seed")
	if err != nil {
		return 0, err
	}
	if k < 1 {
		return 0, paramErrorf("step %d, want ≥ 1", k)
	}
	splitSeed(outBuf(out, 2), gdiv.StepSeed(seed, k))
	return 0, nil
}
