package gdiv

import (
	"errors"
	"fmt"
)

// Sentinel errors. Functions wrap them with details (row, column, value),
// so test with errors.Is.
var (
	// ErrEmpty: there are no examples (n = 0).
	ErrEmpty = errors.New("gdiv: empty input: no examples (n = 0)")
	// ErrZeroDim: the examples have no coordinates (d = 0).
	ErrZeroDim = errors.New("gdiv: zero dimension: rows have no coordinates (d = 0)")
	// ErrNonFinite: an input value is NaN or ±Inf.
	ErrNonFinite = errors.New("gdiv: non-finite value (NaN or Inf)")
	// ErrOverflow: all inputs are finite but a sum of squares overflowed float64.
	ErrOverflow = errors.New("gdiv: float64 overflow in a sum of squares")
	// ErrAllZero: every gradient is zero, so the diversity is 0/0 and undefined.
	ErrAllZero = errors.New("gdiv: all gradients are zero: diversity is 0/0 (undefined)")
	// ErrTooFew: an unbiased estimate needs at least two examples in the batch.
	ErrTooFew = errors.New("gdiv: an unbiased estimate needs a batch of at least 2 examples")
	// ErrShape: buffers or arguments have inconsistent sizes.
	ErrShape = errors.New("gdiv: shape mismatch")
	// ErrParam: a parameter is outside its valid range.
	ErrParam = errors.New("gdiv: invalid parameter")
)

// nonFiniteAt returns an ErrNonFinite naming the first non-finite entry of a
// row-major n×d buffer, or nil when every entry is finite.
func nonFiniteAt[T float32 | float64](grads []T, d int, what string) error {
	for k, v := range grads {
		f := float64(v)
		if f-f != 0 { // NaN or ±Inf
			return fmt.Errorf("%w in %s at row %d, column %d: %v", ErrNonFinite, what, k/d, k%d, f)
		}
	}
	return nil
}

// FieldError is an error about one named setting or argument. Field is its
// name in the project's vocabulary (snake_case, as the Python package spells
// it: "min_batch", "estimator_beta"), so that callers in other languages
// get the name as data rather than parsing the message; Err is the error
// itself, wrapping a sentinel (usually ErrParam).
type FieldError struct {
	Field string
	Err   error
}

func (e *FieldError) Error() string { return e.Err.Error() }

// Unwrap returns Err.
func (e *FieldError) Unwrap() error { return e.Err }

// fieldErr returns a *FieldError for field wrapping an ErrParam error.
func fieldErr(field, format string, args ...any) error {
	return &FieldError{Field: field, Err: paramErr(format, args...)}
}

// NonFiniteAt returns an error wrapping ErrNonFinite that names the first
// NaN or ±Inf entry of the row-major n×d buffer grads ("... in WHAT at row
// i, column j: v"), or nil when every entry is finite; d must be ≥ 1. The
// readers and the trainer use it to report bad data the way the statistics
// do.
func NonFiniteAt[T float32 | float64](grads []T, d int, what string) error {
	return nonFiniteAt(grads, d, what)
}

// IsFinite reports whether x is neither NaN nor ±Inf.
func IsFinite(x float64) bool { return isFinite(x) }

func isFinite(x float64) bool { return x-x == 0 }

func paramErr(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrParam}, args...)...)
}
