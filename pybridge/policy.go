package pybridge

import (
	"math"

	"github.com/gdiv/gdiv/gdiv"
)

// A gdiv.BatchSizePolicy crosses as the address of 8 float64 values owned
// by the caller (the Python BatchSizePolicy keeps them), in field order:
//
//	policy[0:8] = Delta, MinBatch, MaxBatch, MultipleOf, Hysteresis,
//	              MaxGrowth, Warmup, LR
//
// with the integers (and LR's code: 0 none, 1 linear, 2 sqrt — the values of
// gdiv.LRNone, LRLinear, LRSqrt) written as exact float64 values. Zero
// fields mean what they mean in Go (defaults). Every export that reads a
// policy validates it with BatchSizePolicy.Validate, so Next's and SGD's
// panics for an invalid policy cannot be reached from Python.
const policyLen = 8

// maxExactInt is 2^53, the largest integer range in which every integer is
// a float64.
const maxExactInt = 1 << 53

// intOf converts the float64 v to an int, or returns an ErrParam error
// naming the field when v is not an integer of magnitude at most 2^53.
func intOf(what string, v float64) (int, error) {
	if v != math.Trunc(v) || math.Abs(v) > maxExactInt {
		return 0, paramErrorf("%s = %v is not an integer in [-2^53, 2^53]", what, v)
	}
	return int(v), nil
}

// readPolicy returns the validated policy at addr (see policyLen).
func readPolicy(addr uintptr) (gdiv.BatchSizePolicy, error) {
	v := outBuf(addr, policyLen)
	var ints [5]int
	for i, f := range []struct {
		name, field string
		at          int
	}{{"min batch", "min_batch", 1}, {"max batch", "max_batch", 2}, {"multiple of", "multiple_of", 3}, {"warmup", "warmup", 6}, {"LR rule", "lr_rule", 7}} {
		k, err := intOf("batch-size policy "+f.name, v[f.at])
		if err != nil {
			return gdiv.BatchSizePolicy{}, &gdiv.FieldError{Field: f.field, Err: err}
		}
		ints[i] = k
	}
	p := gdiv.BatchSizePolicy{
		Delta: v[0], MinBatch: ints[0], MaxBatch: ints[1], MultipleOf: ints[2],
		Hysteresis: v[4], MaxGrowth: v[5], Warmup: ints[3], LR: gdiv.LRRule(ints[4]),
	}
	return p, p.Validate()
}

// writePolicy writes p to the 8 values at addr (see policyLen).
func writePolicy(o []float64, p gdiv.BatchSizePolicy) {
	o[0], o[1], o[2], o[3] = p.Delta, float64(p.MinBatch), float64(p.MaxBatch), float64(p.MultipleOf)
	o[4], o[5], o[6], o[7] = p.Hysteresis, p.MaxGrowth, float64(p.Warmup), float64(p.LR)
}

// PolicyValidate returns the error of Validate of the policy at addr
// ([param], naming the field), or 0.
func PolicyValidate(policy uintptr) (_ int, err error) {
	defer guard(&err)
	_, err = readPolicy(policy)
	return 0, err
}

// PolicyNext returns BatchSizePolicy.Next(current, est, step) for the
// policy at addr and est = {M2: m2, G: g, BatchBound: batchBound,
// NoSignal: noSignal} (Next reads only BatchBound and NoSignal). Arguments
// for which Next would panic are CheckNext's [param] errors naming the
// argument.
func PolicyNext(policy uintptr, current int, m2, g, batchBound float64, noSignal bool, step int) (_ int, err error) {
	defer guard(&err)
	p, err := readPolicy(policy)
	if err != nil {
		return 0, err
	}
	est := gdiv.Estimate{M2: m2, G: g, BatchBound: batchBound, NoiseScale: batchBound - 1, NoSignal: noSignal}
	if err := p.CheckNext(current, est, step); err != nil {
		return 0, err
	}
	return p.Next(current, est, step), nil
}

// PolicyScaleLR returns gdiv.ScaleLR(rule, lr, oldBatch, newBatch), rule
// the LR code of the policy layout. Arguments for which ScaleLR would
// panic, and an lr that is not finite and > 0, are [param] errors.
func PolicyScaleLR(rule int, lr float64, oldBatch, newBatch int) (_ float64, err error) {
	defer guard(&err)
	r := gdiv.LRRule(rule)
	// The core validates rules only as a policy field.
	if err := (gdiv.BatchSizePolicy{LR: r}).Validate(); err != nil {
		return 0, err
	}
	switch {
	case !(lr > 0) || math.IsInf(lr, 1):
		return 0, paramErrorf("lr = %v, want a finite learning rate > 0", lr)
	case oldBatch < 1 || newBatch < 1:
		return 0, paramErrorf("batches %d → %d, want ≥ 1", oldBatch, newBatch)
	case r == gdiv.LRAdaScale:
		return 0, paramErrorf("the adascale rule depends on the estimate: its factor comes from a Controller (Decision.lr_factor), not from the batches alone")
	}
	return gdiv.ScaleLR(r, lr, oldBatch, newBatch), nil
}
