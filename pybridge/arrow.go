//go:build cgo

package pybridge

import (
	"fmt"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/cdata"
)

// viewArrow imports the Arrow C Data Interface structs at arrPtr (struct
// ArrowArray*) and schPtr (struct ArrowSchema*) and views the values of the
// FixedSizeList<float32|float64> array (or an extension array stored as one,
// such as arrow.fixed_shape_tensor, whose tensors are flattened row-major)
// without copying.
//
// Ownership: cdata.ImportCArray moves the caller's ArrowArray into Go
// (marking the caller's struct released) and releases the schema. The
// returned matrix's release releases the imported array, which runs the
// producer's release callback; viewArrow releases it itself on error.
// Array and row offsets (slices) are honoured; nulls are rejected.
func viewArrow(what string, arrPtr, schPtr uintptr) (m matrix, err error) {
	if arrPtr == 0 || schPtr == 0 {
		return matrix{}, paramErrorf("%s: null Arrow C Data struct address", what)
	}
	field, arr, err := cdata.ImportCArray(cdata.ArrayFromPtr(arrPtr), cdata.SchemaFromPtr(schPtr))
	if err != nil {
		return matrix{}, typeErrorf("%s: cannot import the Arrow array: %v", what, err)
	}
	defer func() {
		if err != nil {
			arr.Release()
		}
	}()
	storage := arrow.Array(arr)
	if ext, ok := arr.(array.ExtensionArray); ok {
		storage = ext.Storage()
	}
	lst, ok := storage.(*array.FixedSizeList)
	if !ok {
		return matrix{}, typeErrorf("%s: Arrow array of type %s; want fixed_size_list<float32|float64>[d] or arrow.fixed_shape_tensor (one example per row)", what, describeArrowType(field))
	}
	d := int(lst.DataType().(*arrow.FixedSizeListType).Len())
	n := lst.Len()
	if nulls := lst.NullN(); nulls > 0 {
		return matrix{}, fmt.Errorf("%w: %s: Arrow array has %d null rows (of %d); fill or drop them first", errNull, what, nulls, n)
	}
	start := lst.Offset() * d
	m = matrix{n: n, d: d, release: arr.Release}
	child := lst.ListValues()
	switch c := child.(type) {
	case *array.Float64:
		vals := c.Float64Values()
		if start+n*d > len(vals) {
			return matrix{}, shapeErrorf("%s: Arrow values buffer holds %d values, need %d", what, len(vals), start+n*d)
		}
		m.f64 = vals[start : start+n*d]
	case *array.Float32:
		vals := c.Float32Values()
		if start+n*d > len(vals) {
			return matrix{}, shapeErrorf("%s: Arrow values buffer holds %d values, need %d", what, len(vals), start+n*d)
		}
		m.f32, m.is32 = vals[start:start+n*d], true
	default:
		return matrix{}, typeErrorf("%s: Arrow list values of type %s; want float32 or float64", what, child.DataType())
	}
	if child.NullN() > 0 {
		for i := start; i < start+n*d; i++ {
			if child.IsNull(i) {
				return matrix{}, fmt.Errorf("%w: %s: Arrow values have a null at row %d, column %d; fill or drop it first", errNull, what, i/d-lst.Offset(), i%d)
			}
		}
	}
	return m, nil
}

// describeArrowType names an imported field's type, with the extension
// name when arrow-go does not know the extension and hands over storage.
func describeArrowType(f arrow.Field) string {
	if i := f.Metadata.FindKey("ARROW:extension:name"); i >= 0 {
		return fmt.Sprintf("extension<%s> on %s", f.Metadata.Values()[i], f.Type)
	}
	return f.Type.String()
}
