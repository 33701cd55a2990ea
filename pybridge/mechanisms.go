package pybridge

import (
	"math/rand/v2"
	"runtime/debug"

	"github.com/gdiv/gdiv/gdiv"
)

// Mechanism codes: mech selects the mechanism, param is Dropout's P or
// Langevin's Std, levels is Quantize's Levels, rescale is Dropout's Rescale.
const (
	mechDropout  = 0
	mechLangevin = 1
	mechQuantize = 2
)

// Result buffer lengths.
const (
	expectedLen   = 8
	monteCarloLen = 6
)

// mechanism builds and validates the gdiv mechanism that the codes describe.
func mechanism(mech int, param float64, levels int, rescale bool) (gdiv.Mechanism, error) {
	var m gdiv.Mechanism
	switch mech {
	case mechDropout:
		m = gdiv.Dropout{P: param, Rescale: rescale}
	case mechLangevin:
		m = gdiv.Langevin{Std: param}
	case mechQuantize:
		m = gdiv.Quantize{Levels: levels}
	default:
		return nil, paramErrorf("unknown mechanism code %d", mech)
	}
	return m, m.Validate()
}

// newRand returns the random source of a seed, the same as the CLI's
// (`gdiv dim --seed K`): PCG(seed, 0).
func newRand(seed uint64) *rand.Rand {
	return rand.New(rand.NewPCG(seed, 0))
}

// MechanismValidate returns the mechanism's Validate error ([param]), or 0.
func MechanismValidate(mech int, param float64, levels int, rescale bool) (_ int, err error) {
	defer guard(&err)
	_, err = mechanism(mech, param, levels, rescale)
	return 0, err
}

// MechanismApply applies the mechanism in place to the caller's writable
// n×d buffer at addr (kind 0 or 1; Arrow memory is immutable) with the
// random source PCG(seed, 0). It returns 0.
//
// Memory that is mapped read-only (a torch tensor over a read-only numpy
// memmap: torch.from_numpy keeps no writable flag, so Python cannot tell)
// makes the first write fault. The fault becomes a panic here
// (debug.SetPanicOnFault) and that panic a [param:grads] error, not a crash
// of the interpreter; nothing has been written by then.
func MechanismApply(mech int, param float64, levels int, rescale bool, kind int, addr uintptr, n, d int, seed uint64) (_ int, err error) {
	defer guard(&err)
	defer readOnlyFault(&err, "grads")
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	m, err := mechanism(mech, param, levels, rescale)
	if err != nil {
		return 0, err
	}
	if kind == kindArrow {
		return 0, typeErrorf("grads: Arrow arrays are immutable; apply a mechanism in place to a numpy array or torch tensor")
	}
	g, err := viewBuffer("grads", kind, addr, n, d)
	if err != nil {
		return 0, err
	}
	if g.is32 {
		err = m.Apply32(g.f32, n, d, newRand(seed))
	} else {
		err = m.Apply(g.f64, n, d, newRand(seed))
	}
	return 0, err
}

// readOnlyFault is deferred by exports that write into the caller's memory,
// after debug.SetPanicOnFault(true): it turns a memory fault into an error
// naming the buffer and passes any other panic on (to guard).
func readOnlyFault(err *error, what string) {
	r := recover()
	if r == nil {
		return
	}
	if f, ok := r.(interface{ Addr() uintptr }); ok {
		*err = &gdiv.FieldError{Field: what, Err: paramErrorf("writing into the %s memory faulted at address %#x: the buffer is read-only "+
			"(e.g. a torch tensor over a read-only numpy memmap); pass a writable copy, or use .apply for a new array", what, f.Addr())}
		return
	}
	panic(r)
}

// MechanismExpected computes gdiv.Expected (or Expected32) of the mechanism
// on the matrix operand and writes out[0:8] = n, dim, sum_sq_norms,
// sq_norm_of_sum, diversity, batch_bound, base_diversity,
// base_batch_bound. It returns 0.
func MechanismExpected(out uintptr, mech int, param float64, levels int, rescale bool, kind int, addr, aux uintptr, n, d int) (_ int, err error) {
	defer guard(&err)
	m, err := mechanism(mech, param, levels, rescale)
	if err != nil {
		return 0, err
	}
	g, err := view("grads", kind, addr, aux, n, d)
	if err != nil {
		return 0, err
	}
	defer g.close()
	var e gdiv.Expectation
	if g.is32 {
		e, err = gdiv.Expected32(m, g.f32, g.n, g.d)
	} else {
		e, err = gdiv.Expected(m, g.f64, g.n, g.d)
	}
	if err != nil {
		return 0, err
	}
	o := outBuf(out, expectedLen)
	o[0], o[1] = float64(e.N), float64(e.Dim)
	o[2], o[3] = e.SumSqNorms, e.SqNormOfSum
	o[4], o[5] = e.Diversity, e.BatchBound
	o[6], o[7] = e.BaseDiversity, e.BaseBatchBound
	return 0, nil
}

// MechanismMonteCarlo computes gdiv.MonteCarlo (or MonteCarlo32) of the
// mechanism on the matrix operand with `samples` draws from PCG(seed, 0)
// and writes out[0:6] = samples, sum_sq_norms, sq_norm_of_sum, diversity,
// std_err, batch_bound. The operand is not modified. It returns 0.
func MechanismMonteCarlo(out uintptr, mech int, param float64, levels int, rescale bool, kind int, addr, aux uintptr, n, d, samples int, seed uint64) (_ int, err error) {
	defer guard(&err)
	m, err := mechanism(mech, param, levels, rescale)
	if err != nil {
		return 0, err
	}
	g, err := view("grads", kind, addr, aux, n, d)
	if err != nil {
		return 0, err
	}
	defer g.close()
	var r gdiv.MonteCarloResult
	if g.is32 {
		r, err = gdiv.MonteCarlo32(m, g.f32, g.n, g.d, samples, newRand(seed))
	} else {
		r, err = gdiv.MonteCarlo(m, g.f64, g.n, g.d, samples, newRand(seed))
	}
	if err != nil {
		return 0, err
	}
	o := outBuf(out, monteCarloLen)
	o[0], o[1], o[2] = float64(r.Samples), r.SumSqNorms, r.SqNormOfSum
	o[3], o[4], o[5] = r.Diversity, r.StdErr, r.BatchBound
	return 0, nil
}
