package data

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"strings"

	"github.com/gdiv/gdiv/gdiv"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/ipc"
	"github.com/apache/arrow-go/v18/arrow/memory"
)

// ReadArrowIPC reads a matrix from Arrow IPC data, in either the file format
// (starting with the magic "ARROW1"; .arrow, .feather v2) or the stream
// format. It reads r to the end; name is used in error messages.
//
// Two layouts are accepted:
//
//   - exactly one column of type fixed_size_list<float32|float64>[d] (also
//     as the storage of an extension type such as arrow.fixed_shape_tensor):
//     one example per list, rows = total length of all record batches,
//     Cols = d. Other columns next to it (labels, ids) are ignored;
//   - otherwise, every column float32 or float64: one example per row,
//     Cols = number of columns, Names = the field names.
//
// float32 values are widened to float64. LZ4- and ZSTD-compressed buffers
// (pyarrow's Feather default) are supported. All Arrow memory is allocated
// from memory.DefaultAllocator and released before ReadArrowIPC returns; the
// returned Matrix owns a fresh []float64. Corrupt input gives an ErrFormat
// error, not a crash.
//
// Errors are *ReadError values: ErrFormat for data that is not valid Arrow
// IPC, a null (naming column and 0-based row) or a column of another type
// (naming the column and its type); ErrNonFinite naming the column and row of
// a NaN or Inf; ErrEmpty when there are no rows and ErrZeroDim when there are
// no columns or the list size is 0.
func ReadArrowIPC(r io.Reader, name string) (*Matrix, error) {
	data, err := io.ReadAll(r)
	if err != nil {
		return nil, newReadError(name, ErrFormat, "reading Arrow data: %v", err)
	}
	return readArrow(data, name, memory.DefaultAllocator)
}

// readArrow decodes data with allocator mem (tests pass a checked
// allocator to prove that everything is released).
//
// Corrupt input must give an error, never a crash: the flatbuffer metadata
// is checked before arrow-go sizes anything by it (checkArrowStream,
// checkArrowFile), arrow-go allocates through a arrowLimitAllocator, message
// sizes are capped at len(data), every array is validated before its values
// are read, and a panic inside arrow-go is recovered and reported as
// ErrFormat (memory it held is then left to the garbage collector).
func readArrow(data []byte, name string, mem memory.Allocator) (m *Matrix, err error) {
	defer func() {
		if p := recover(); p != nil {
			m, err = nil, newReadError(name, ErrFormat, "corrupt Arrow IPC data: %v", p)
		}
	}()
	if len(data) == 0 {
		return nil, newReadError(name, gdiv.ErrEmpty, "no data rows: the file is empty")
	}
	isFile := bytes.HasPrefix(data, arrowMagic)
	check := checkArrowStream
	if isFile {
		check = checkArrowFile
	}
	if err := check(data); err != nil {
		return nil, newReadError(name, ErrFormat, "corrupt Arrow IPC metadata: %v", err)
	}
	// Every message lies inside data, so no body or metadata can be larger.
	limit := int64(max(len(data), 8))
	mem = &arrowLimitAllocator{Allocator: mem, limit: arrowAllocLimit(len(data))}
	opts := []ipc.Option{ipc.WithAllocator(mem), ipc.WithBodySizeLimit(limit), ipc.WithMetadataSizeLimit(limit)}

	var acc *arrowAccumulator
	if isFile {
		fr, err := ipc.NewFileReader(bytes.NewReader(data), opts...)
		if err != nil {
			return nil, newReadError(name, ErrFormat, "not a valid Arrow IPC file: %v", err)
		}
		defer fr.Close()
		if acc, err = newArrowAccumulator(fr.Schema(), name); err != nil {
			return nil, err
		}
		for i := 0; i < fr.NumRecords(); i++ {
			rec, err := fr.RecordBatchAt(i)
			if err != nil {
				return nil, newReadError(name, ErrFormat, "record batch %d: %v", i, err)
			}
			err = acc.add(rec)
			rec.Release()
			if err != nil {
				return nil, err
			}
		}
	} else {
		// ipc.NewReader does not pass the size limits on to its message
		// reader (arrow-go v18.8.0), so a forged body length could make it
		// allocate without bound; build the message reader ourselves.
		mr := ipc.NewMessageReader(bytes.NewReader(data), opts...)
		rr, err := ipc.NewReaderFromMessageReader(mr, opts...)
		if err != nil {
			return nil, newReadError(name, ErrFormat, "not valid Arrow IPC data (neither file nor stream format): %v", err)
		}
		defer rr.Release()
		if acc, err = newArrowAccumulator(rr.Schema(), name); err != nil {
			return nil, err
		}
		for rr.Next() {
			if err := acc.add(rr.RecordBatch()); err != nil {
				return nil, err
			}
		}
		if err := rr.Err(); err != nil {
			return nil, newReadError(name, ErrFormat, "record batch %d: %v", acc.batches, err)
		}
	}
	if acc.m.Rows == 0 {
		return nil, newReadError(name, gdiv.ErrEmpty, "no data rows")
	}
	return acc.m, nil
}

// arrowAccumulator appends record batches to a Matrix following the layout
// chosen from the schema.
type arrowAccumulator struct {
	name    string
	schema  *arrow.Schema
	list    int   // index of the fixed-size-list column, or -1
	cols    []int // float columns (when list < 0)
	m       *Matrix
	batches int
}

// arrowStorageType returns the storage type of an extension type, else dt.
func arrowStorageType(dt arrow.DataType) arrow.DataType {
	if ext, ok := dt.(arrow.ExtensionType); ok {
		return ext.StorageType()
	}
	return dt
}

func arrowIsFloat(dt arrow.DataType) bool {
	id := arrowStorageType(dt).ID()
	return id == arrow.FLOAT32 || id == arrow.FLOAT64
}

// arrowDescribeType names a field's type, with the extension name when the
// extension is not registered (arrow-go then hands over the storage type and
// keeps the name in the field metadata).
func arrowDescribeType(f arrow.Field) string {
	if ext, ok := f.Type.(arrow.ExtensionType); ok {
		return fmt.Sprintf("extension<%s> on %s", ext.ExtensionName(), ext.StorageType())
	}
	if i := f.Metadata.FindKey(ipc.ExtensionTypeKeyName); i >= 0 {
		return fmt.Sprintf("extension<%s> on %s", f.Metadata.Values()[i], f.Type)
	}
	return f.Type.String()
}

const arrowLayouts = "need one fixed_size_list<float32|float64> column, or only float32/float64 columns"

func newArrowAccumulator(schema *arrow.Schema, name string) (*arrowAccumulator, error) {
	a := &arrowAccumulator{name: name, schema: schema, list: -1, m: &Matrix{}}
	fields := schema.Fields()
	if len(fields) == 0 {
		return nil, newReadError(name, gdiv.ErrZeroDim, "the Arrow schema has no columns")
	}
	var lists []int
	for j, f := range fields {
		if arrowStorageType(f.Type).ID() == arrow.FIXED_SIZE_LIST {
			lists = append(lists, j)
		}
	}
	switch {
	case len(lists) == 1:
		f := fields[lists[0]]
		lt := arrowStorageType(f.Type).(*arrow.FixedSizeListType)
		if !arrowIsFloat(lt.Elem()) {
			return nil, newReadError(name, ErrFormat, "column %q has type %s: its elements are not float32 or float64 (%s)", f.Name, arrowDescribeType(f), arrowLayouts)
		}
		if lt.Len() <= 0 {
			return nil, newReadError(name, gdiv.ErrZeroDim, "column %q has type %s: lists of size %d", f.Name, arrowDescribeType(f), lt.Len())
		}
		a.list = lists[0]
		a.m.Cols = int(lt.Len())
	case len(lists) > 1:
		names := make([]string, len(lists))
		for k, j := range lists {
			names[k] = fmt.Sprintf("%q", fields[j].Name)
		}
		return nil, newReadError(name, ErrFormat, "%d fixed-size-list columns (%s): %s", len(lists), strings.Join(names, ", "), arrowLayouts)
	default:
		for j, f := range fields {
			if !arrowIsFloat(f.Type) {
				return nil, newReadError(name, ErrFormat, "column %q has type %s: %s", f.Name, arrowDescribeType(f), arrowLayouts)
			}
			a.cols = append(a.cols, j)
			a.m.Names = append(a.m.Names, f.Name)
		}
		a.m.Cols = len(a.cols)
	}
	return a, nil
}

// arrowUnwrap returns the storage array of an extension array, else arr.
func arrowUnwrap(arr arrow.Array) arrow.Array {
	if ext, ok := arr.(array.ExtensionArray); ok {
		return ext.Storage()
	}
	return arr
}

// arrowFloatValues returns the values of a float32/float64 array as an accessor.
func arrowFloatValues(arr arrow.Array) (func(i int) float64, bool) {
	switch x := arrowUnwrap(arr).(type) {
	case *array.Float64:
		v := x.Float64Values()
		return func(i int) float64 { return v[i] }, true
	case *array.Float32:
		v := x.Float32Values()
		return func(i int) float64 { return float64(v[i]) }, true
	}
	return nil, false
}

func (a *arrowAccumulator) add(rec arrow.RecordBatch) error {
	a.batches++
	batch := a.batches - 1
	if !rec.Schema().Equal(a.schema) {
		return newReadError(a.name, ErrFormat, "record batch %d has a different schema", batch)
	}
	n := int(rec.NumRows())
	base := a.m.Rows
	m := a.m
	// Validate the buffers before trusting any length: only then is the
	// memory reserved below bounded by the size of the input.
	if a.list >= 0 {
		f := a.schema.Field(a.list)
		lst, ok := arrowUnwrap(rec.Column(a.list)).(*array.FixedSizeList)
		if !ok {
			return newReadError(a.name, ErrFormat, "column %q: record batch %d does not hold a fixed-size list", f.Name, batch)
		}
		if err := array.Validate(lst); err != nil {
			return newReadError(a.name, ErrFormat, "column %q in record batch %d: %v", f.Name, batch, err)
		}
		child := lst.ListValues()
		if err := array.Validate(child); err != nil {
			return newReadError(a.name, ErrFormat, "column %q in record batch %d: %v", f.Name, batch, err)
		}
		at, ok := arrowFloatValues(child)
		if !ok || lst.Len() != n {
			return newReadError(a.name, ErrFormat, "column %q: inconsistent list data in record batch %d", f.Name, batch)
		}
		m.Data = arrowGrow(m.Data, n*m.Cols)
		for i := 0; i < n; i++ {
			if lst.IsNull(i) {
				return newReadError(a.name, ErrFormat, "column %q, row %d (0-based) is null", f.Name, base+i)
			}
			start, _ := lst.ValueOffsets(i)
			for j := 0; j < m.Cols; j++ {
				k := int(start) + j
				if child.IsNull(k) {
					return newReadError(a.name, ErrFormat, "column %q, row %d, element %d (0-based) is null", f.Name, base+i, j)
				}
				v := at(k)
				if math.IsNaN(v) || math.IsInf(v, 0) {
					return newReadError(a.name, gdiv.ErrNonFinite, "non-finite value %v in column %q, row %d, element %d (0-based; NaN and Inf are not allowed)", v, f.Name, base+i, j)
				}
				m.Data = append(m.Data, v)
			}
		}
		m.Rows += n
		return nil
	}

	values := make([]func(int) float64, len(a.cols))
	for j, c := range a.cols {
		f := a.schema.Field(c)
		col := rec.Column(c)
		if err := array.Validate(arrowUnwrap(col)); err != nil {
			return newReadError(a.name, ErrFormat, "column %q in record batch %d: %v", f.Name, batch, err)
		}
		at, ok := arrowFloatValues(col)
		if !ok || col.Len() != n {
			return newReadError(a.name, ErrFormat, "column %q: inconsistent data in record batch %d", f.Name, batch)
		}
		values[j] = at
	}
	start := len(m.Data)
	m.Data = arrowGrow(m.Data, n*m.Cols)[:start+n*m.Cols]
	for j, c := range a.cols {
		f := a.schema.Field(c)
		col := rec.Column(c)
		at := values[j]
		for i := 0; i < n; i++ {
			if col.IsNull(i) {
				return newReadError(a.name, ErrFormat, "column %q, row %d (0-based) is null", f.Name, base+i)
			}
			v := at(i)
			if math.IsNaN(v) || math.IsInf(v, 0) {
				return newReadError(a.name, gdiv.ErrNonFinite, "non-finite value %v in column %q, row %d (0-based; NaN and Inf are not allowed)", v, f.Name, base+i)
			}
			m.Data[start+i*m.Cols+j] = v
		}
	}
	m.Rows += n
	return nil
}

// arrowGrow returns s with room for k more elements.
func arrowGrow(s []float64, k int) []float64 {
	if cap(s)-len(s) >= k {
		return s
	}
	t := make([]float64, len(s), len(s)+max(k, len(s)))
	copy(t, s)
	return t
}

// --- Guards against corrupt input ------------------------------------------
//
// arrow-go (v18.8.0) trusts the lengths inside IPC metadata in two places
// where a corrupt file would make it allocate without bound, a fatal
// out-of-memory rather than a recoverable panic: it sizes slices by the
// vector lengths of flatbuffer metadata (schema fields, field children,
// custom metadata), and it allocates the uncompressed size an LZ4/ZSTD
// buffer declares. checkArrowMetadata verifies those vectors before arrow-go
// reads them, and arrowLimitAllocator caps what arrow-go may allocate.

// errArrowBudget is the panic value of arrowLimitAllocator.
type errArrowBudget struct{ want, limit int }

func (e errArrowBudget) String() string {
	return fmt.Sprintf("decoding would allocate %d bytes, over the %d-byte limit for this input", e.want, e.limit)
}

// arrowLimitAllocator wraps an allocator and panics with errArrowBudget when the
// bytes outstanding would exceed limit.
type arrowLimitAllocator struct {
	memory.Allocator
	used, limit int
}

func (a *arrowLimitAllocator) Allocate(size int) []byte {
	if size < 0 || size > a.limit-a.used {
		panic(errArrowBudget{size, a.limit})
	}
	a.used += size
	return a.Allocator.Allocate(size)
}

func (a *arrowLimitAllocator) Reallocate(size int, b []byte) []byte {
	if size < 0 || size-len(b) > a.limit-a.used {
		panic(errArrowBudget{size, a.limit})
	}
	a.used += size - len(b)
	return a.Allocator.Reallocate(size, b)
}

func (a *arrowLimitAllocator) Free(b []byte) {
	a.used -= len(b)
	a.Allocator.Free(b)
}

// arrowAllocLimit is the most arrow-go may hold at once while decoding an
// input of n bytes: generous enough for LZ4/ZSTD buffers compressed 256:1.
func arrowAllocLimit(n int) int {
	const base = 64 << 20
	if n > (math.MaxInt-base)/256 {
		return math.MaxInt
	}
	return base + 256*n
}

// flatBuf is a bounds-checked reader of one flatbuffer.
type flatBuf struct {
	b      []byte
	budget int // tables left to visit; bounds the work on shared subtrees
}

func (f *flatBuf) u32(pos int) (int, bool) {
	if pos < 0 || pos > len(f.b)-4 {
		return 0, false
	}
	return int(uint32(f.b[pos]) | uint32(f.b[pos+1])<<8 | uint32(f.b[pos+2])<<16 | uint32(f.b[pos+3])<<24), true
}

func (f *flatBuf) u16(pos int) (int, bool) {
	if pos < 0 || pos > len(f.b)-2 {
		return 0, false
	}
	return int(f.b[pos]) | int(f.b[pos+1])<<8, true
}

// flatTable is a table at pos with its vtable.
type flatTable struct {
	f        *flatBuf
	pos      int
	vt, vlen int
}

var errFlatBuf = errors.New("corrupt flatbuffer metadata")

func (f *flatBuf) table(pos int) (flatTable, error) {
	f.budget--
	if f.budget < 0 {
		return flatTable{}, fmt.Errorf("%w: too many tables", errFlatBuf)
	}
	so, ok := f.u32(pos)
	if !ok {
		return flatTable{}, errFlatBuf
	}
	vt := pos - int(int32(uint32(so)))
	vlen, ok := f.u16(vt)
	if !ok || vlen < 4 || vt+vlen > len(f.b) {
		return flatTable{}, errFlatBuf
	}
	return flatTable{f: f, pos: pos, vt: vt, vlen: vlen}, nil
}

func (f *flatBuf) root() (flatTable, error) {
	p, ok := f.u32(0)
	if !ok {
		return flatTable{}, errFlatBuf
	}
	return f.table(p)
}

// field returns the absolute position of field slot, or 0 when absent.
func (t flatTable) field(slot int) int {
	vo := 4 + 2*slot
	if vo+2 > t.vlen {
		return 0
	}
	o, _ := t.f.u16(t.vt + vo)
	if o == 0 {
		return 0
	}
	return t.pos + o
}

// ref follows the offset in field slot; 0 when absent.
func (t flatTable) ref(slot int) (int, error) {
	p := t.field(slot)
	if p == 0 {
		return 0, nil
	}
	o, ok := t.f.u32(p)
	if !ok || p+o > len(t.f.b)-4 {
		return 0, errFlatBuf
	}
	return p + o, nil
}

// vector checks the vector in field slot with elements of elem bytes and
// returns the position of its first element and its length.
func (t flatTable) vector(slot, elem int) (start, n int, err error) {
	p, err := t.ref(slot)
	if err != nil || p == 0 {
		return 0, 0, err
	}
	n, _ = t.f.u32(p)
	if n > (len(t.f.b)-p-4)/elem {
		return 0, 0, fmt.Errorf("%w: vector of %d elements overruns the buffer", errFlatBuf, n)
	}
	return p + 4, n, nil
}

// tables visits the tables of a vector of tables in field slot.
func (t flatTable) tables(slot int, visit func(flatTable) error) error {
	start, n, err := t.vector(slot, 4)
	if err != nil {
		return err
	}
	for k := 0; k < n; k++ {
		e := start + 4*k
		o, _ := t.f.u32(e)
		c, err := t.f.table(e + o)
		if err != nil {
			return err
		}
		if err := visit(c); err != nil {
			return err
		}
	}
	return nil
}

// Slots of the Arrow flatbuffer tables (format/*.fbs).
const (
	slotFooterSchema, slotFooterDicts, slotFooterBatches, slotFooterMeta = 1, 2, 3, 4
	slotMsgHeaderType, slotMsgHeader, slotMsgBodyLength, slotMsgMeta     = 1, 2, 3, 4
	slotSchemaFields, slotSchemaMeta, slotSchemaFeatures                 = 1, 2, 3
	slotFieldChildren, slotFieldMeta                                     = 5, 6
	msgHeaderSchema                                                      = 1
	maxArrowNesting                                                      = 64
)

func (t flatTable) checkMeta(slot int) error {
	_, _, err := t.vector(slot, 4)
	return err
}

func arrowCheckField(t flatTable, depth int) error {
	if depth > maxArrowNesting {
		return fmt.Errorf("%w: types nested deeper than %d", errFlatBuf, maxArrowNesting)
	}
	if err := t.checkMeta(slotFieldMeta); err != nil {
		return err
	}
	return t.tables(slotFieldChildren, func(c flatTable) error { return arrowCheckField(c, depth+1) })
}

func arrowCheckSchema(t flatTable) error {
	if err := t.checkMeta(slotSchemaMeta); err != nil {
		return err
	}
	if _, _, err := t.vector(slotSchemaFeatures, 8); err != nil {
		return err
	}
	return t.tables(slotSchemaFields, func(c flatTable) error { return arrowCheckField(c, 0) })
}

// arrowCheckMessage verifies one Message flatbuffer and returns its body length.
func arrowCheckMessage(b []byte) (int64, error) {
	f := &flatBuf{b: b, budget: len(b)/4 + 8}
	t, err := f.root()
	if err != nil {
		return 0, err
	}
	if err := t.checkMeta(slotMsgMeta); err != nil {
		return 0, err
	}
	var body int64
	if p := t.field(slotMsgBodyLength); p != 0 {
		if p > len(b)-8 {
			return 0, errFlatBuf
		}
		body = int64(binary.LittleEndian.Uint64(b[p:]))
	}
	if p := t.field(slotMsgHeaderType); p != 0 && p < len(b) && b[p] == msgHeaderSchema {
		h, err := t.ref(slotMsgHeader)
		if err != nil {
			return 0, err
		}
		if h != 0 {
			s, err := f.table(h)
			if err != nil {
				return 0, err
			}
			if err := arrowCheckSchema(s); err != nil {
				return 0, err
			}
		}
	}
	return body, nil
}

// checkArrowStream verifies the metadata of the messages of an IPC stream
// starting at data[0], up to the end-of-stream marker or the first message
// arrow-go itself will reject.
func checkArrowStream(data []byte) error {
	pos := 0
	for pos <= len(data)-4 {
		cid := binary.LittleEndian.Uint32(data[pos:])
		var n, start int
		switch cid {
		case 0:
			return nil
		case 0xFFFFFFFF:
			if pos > len(data)-8 {
				return nil
			}
			n, start = int(int32(binary.LittleEndian.Uint32(data[pos+4:]))), pos+8
		default:
			n, start = int(int32(cid)), pos+4
		}
		if n <= 0 || n > len(data)-start {
			return nil // arrow-go reports it
		}
		body, err := arrowCheckMessage(data[start : start+n])
		if err != nil {
			return err
		}
		if body < 0 || body > int64(len(data)-start-n) {
			return nil
		}
		pos = start + n + int(body)
	}
	return nil
}

// checkArrowFile verifies the footer of an IPC file and the message of every
// block it lists.
func checkArrowFile(data []byte) error {
	const tail = 10 // int32 footer length + "ARROW1"
	if len(data) < len(arrowMagic)+tail || !bytes.Equal(data[len(data)-6:], arrowMagic) {
		return nil // arrow-go reports it
	}
	size := int(binary.LittleEndian.Uint32(data[len(data)-tail:]))
	if size <= 0 || size > len(data)-tail {
		return nil
	}
	f := &flatBuf{b: data[len(data)-tail-size : len(data)-tail]}
	f.budget = len(f.b)/4 + 8
	t, err := f.root()
	if err != nil {
		return err
	}
	if err := t.checkMeta(slotFooterMeta); err != nil {
		return err
	}
	if s, err := t.ref(slotFooterSchema); err != nil {
		return err
	} else if s != 0 {
		st, err := f.table(s)
		if err != nil {
			return err
		}
		if err := arrowCheckSchema(st); err != nil {
			return err
		}
	}
	for _, slot := range []int{slotFooterDicts, slotFooterBatches} {
		const blockSize = 24 // Block{offset int64, metaDataLength int32, pad, bodyLength int64}
		start, n, err := t.vector(slot, blockSize)
		if err != nil {
			return err
		}
		for k := 0; k < n; k++ {
			e := f.b[start+blockSize*k:]
			off := int64(binary.LittleEndian.Uint64(e))
			meta := int64(int32(binary.LittleEndian.Uint32(e[8:])))
			if off < 0 || meta < 8 || off > int64(len(data)) || meta > int64(len(data))-off {
				continue // arrow-go rejects the block
			}
			m := data[off : off+meta]
			prefix := 4
			if binary.LittleEndian.Uint32(m) == 0xFFFFFFFF {
				prefix = 8
			}
			if _, err := arrowCheckMessage(m[prefix:]); err != nil {
				return err
			}
		}
	}
	return nil
}
