package pybridge

import (
	"errors"
	"fmt"
	"runtime/debug"

	"github.com/gdiv/gdiv/gdiv"
	"github.com/gdiv/gdiv/gdiv/data"
)

// errType and errNull are conversion errors of this package (not data
// errors of gdiv): an Arrow array of a type that cannot be viewed as a float
// matrix, and an Arrow array with nulls.
var (
	errType = errors.New("gdiv: unsupported input type")
	errNull = errors.New("gdiv: input has nulls")
)

// tags maps each sentinel error to the tag the Python package dispatches on.
var tags = []struct {
	err error
	tag string
}{
	{gdiv.ErrEmpty, "empty"},
	{gdiv.ErrZeroDim, "zero_dim"},
	{gdiv.ErrNonFinite, "non_finite"},
	{gdiv.ErrOverflow, "overflow"},
	{gdiv.ErrAllZero, "all_zero"},
	{gdiv.ErrTooFew, "too_few"},
	{gdiv.ErrShape, "shape"},
	{gdiv.ErrParam, "param"},
	{data.ErrLabel, "label"},
	{errNull, "null"},
	{errType, "type"},
}

// tagged prefixes err's message with the tag of its sentinel ("[param] ..."),
// or "[internal]" when err wraps none. When err holds a *gdiv.FieldError
// the tag carries the field's name ("[param:min_batch] ..."): the name is
// data, set where the error is made, never parsed from the message. nil
// stays nil.
func tagged(err error) error {
	if err == nil {
		return nil
	}
	field := ""
	var fe *gdiv.FieldError
	if errors.As(err, &fe) {
		field = ":" + fe.Field
	}
	for _, t := range tags {
		if errors.Is(err, t.err) {
			return fmt.Errorf("[%s%s] %w", t.tag, field, err)
		}
	}
	return fmt.Errorf("[internal] %w", err)
}

// guard is deferred by every export with the address of its error result.
// It turns a panic into an "[internal]" error — a Go panic must never reach
// the Python interpreter, which it would abort — and tags any other error.
func guard(err *error) {
	if r := recover(); r != nil {
		*err = fmt.Errorf("[internal] gdiv: internal error (Go panic: %v); please report it with this trace:\n%s", r, debug.Stack())
		return
	}
	*err = tagged(*err)
}

// typeErrorf returns an errType error with a message naming the problem.
func typeErrorf(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{errType}, args...)...)
}

// shapeErrorf returns an ErrShape error with a message naming the problem.
func shapeErrorf(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{gdiv.ErrShape}, args...)...)
}

// paramErrorf returns an ErrParam error with a message naming the problem.
func paramErrorf(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{gdiv.ErrParam}, args...)...)
}
