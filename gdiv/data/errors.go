package data

import (
	"fmt"

	"github.com/gdiv/gdiv/gdiv"
)

// paramErr returns an error wrapping gdiv.ErrParam: a parameter is outside
// its valid range.
func paramErr(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{gdiv.ErrParam}, args...)...)
}
