package data

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/gdiv/gdiv/gdiv"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/ipc"
	"github.com/apache/arrow-go/v18/arrow/memory"
)

// testTensorType is a registered extension type stored as a fixed-size list,
// standing in for a user's own tensor type.
type testTensorType struct{ arrow.ExtensionBase }

type testTensorArray struct{ array.ExtensionArrayBase }

func newTestTensorType(storage arrow.DataType) *testTensorType {
	return &testTensorType{arrow.ExtensionBase{Storage: storage}}
}
func (*testTensorType) ArrayType() reflect.Type { return reflect.TypeOf(testTensorArray{}) }
func (*testTensorType) ExtensionName() string   { return "gdiv.test_tensor" }
func (*testTensorType) Serialize() string       { return "" }
func (t *testTensorType) ExtensionEquals(o arrow.ExtensionType) bool {
	return o.ExtensionName() == t.ExtensionName() && arrow.TypeEqual(t.Storage, o.StorageType())
}
func (*testTensorType) Deserialize(storage arrow.DataType, _ string) (arrow.ExtensionType, error) {
	return newTestTensorType(storage), nil
}

func init() {
	if err := arrow.RegisterExtensionType(newTestTensorType(arrow.FixedSizeListOf(2, arrow.PrimitiveTypes.Float64))); err != nil {
		panic(err)
	}
}

// testWriteIPC writes the record batches as an Arrow IPC file or stream.
func testWriteIPC(t testing.TB, schema *arrow.Schema, recs []arrow.RecordBatch, file bool) []byte {
	t.Helper()
	var buf bytes.Buffer
	var w interface {
		Write(arrow.RecordBatch) error
		Close() error
	}
	if file {
		fw, err := ipc.NewFileWriter(&buf, ipc.WithSchema(schema))
		if err != nil {
			t.Fatal(err)
		}
		w = fw
	} else {
		w = ipc.NewWriter(&buf, ipc.WithSchema(schema))
	}
	for _, r := range recs {
		if err := w.Write(r); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func testF64(vs ...float64) []*float64 {
	out := make([]*float64, len(vs))
	for i := range vs {
		out[i] = &vs[i]
	}
	return out
}

// testFloatArray builds a float32 or float64 array; nil entries are nulls.
func testFloatArray(mem memory.Allocator, dt arrow.DataType, vs []*float64) arrow.Array {
	b := array.NewBuilder(mem, dt)
	defer b.Release()
	for _, v := range vs {
		switch {
		case v == nil:
			b.AppendNull()
		case dt.ID() == arrow.FLOAT32:
			b.(*array.Float32Builder).Append(float32(*v))
		default:
			b.(*array.Float64Builder).Append(*v)
		}
	}
	return b.NewArray()
}

// testListArray builds a fixed_size_list<elem>[size]; a nil row is a null list.
func testListArray(mem memory.Allocator, elem arrow.DataType, size int32, rows [][]*float64) arrow.Array {
	b := array.NewFixedSizeListBuilder(mem, size, elem)
	defer b.Release()
	vb := b.ValueBuilder()
	for _, r := range rows {
		if r == nil {
			b.AppendNull()
			continue
		}
		b.Append(true)
		for _, v := range r {
			switch {
			case v == nil:
				vb.AppendNull()
			case elem.ID() == arrow.FLOAT32:
				vb.(*array.Float32Builder).Append(float32(*v))
			case elem.ID() == arrow.FLOAT64:
				vb.(*array.Float64Builder).Append(*v)
			case elem.ID() == arrow.INT32:
				vb.(*array.Int32Builder).Append(int32(*v))
			}
		}
	}
	return b.NewArray()
}

func testInt64Array(mem memory.Allocator, vs ...int64) arrow.Array {
	b := array.NewInt64Builder(mem)
	defer b.Release()
	b.AppendValues(vs, nil)
	return b.NewArray()
}

func testStringArray(mem memory.Allocator, vs ...string) arrow.Array {
	b := array.NewStringBuilder(mem)
	defer b.Release()
	b.AppendValues(vs, nil)
	return b.NewArray()
}

// record assembles a record batch and releases the columns (the record
// holds its own references).
func testRecord(schema *arrow.Schema, cols ...arrow.Array) arrow.RecordBatch {
	rec := array.NewRecordBatch(schema, cols, int64(cols[0].Len()))
	for _, c := range cols {
		c.Release()
	}
	return rec
}

func testRelease(recs []arrow.RecordBatch) {
	for _, r := range recs {
		r.Release()
	}
}

type arrowTestCase struct {
	name   string
	schema *arrow.Schema
	recs   func(mem memory.Allocator, s *arrow.Schema) []arrow.RecordBatch
}

var testTensorMeta = arrow.NewMetadata(
	[]string{ipc.ExtensionTypeKeyName, ipc.ExtensionMetadataKeyName},
	[]string{"arrow.fixed_shape_tensor", `{"shape":[3]}`})

func TestReadArrowValid(t *testing.T) {
	floats := arrow.NewSchema([]arrow.Field{
		{Name: "a", Type: arrow.PrimitiveTypes.Float64},
		{Name: "b", Type: arrow.PrimitiveTypes.Float32, Nullable: true},
	}, nil)
	lists := arrow.NewSchema([]arrow.Field{
		{Name: "id", Type: arrow.BinaryTypes.String},
		{Name: "x", Type: arrow.FixedSizeListOf(3, arrow.PrimitiveTypes.Float32)},
		{Name: "label", Type: arrow.PrimitiveTypes.Int64},
		{Name: "w", Type: arrow.PrimitiveTypes.Float64},
	}, nil)
	tensor := arrow.NewSchema([]arrow.Field{
		{Name: "t", Type: arrow.FixedSizeListOf(3, arrow.PrimitiveTypes.Float64), Metadata: testTensorMeta},
	}, nil)
	extType := newTestTensorType(arrow.FixedSizeListOf(2, arrow.PrimitiveTypes.Float64))
	ext := arrow.NewSchema([]arrow.Field{{Name: "e", Type: extType}}, nil)

	for _, tc := range []struct {
		arrowTestCase
		rows, cols int
		data       []float64
		names      []string
	}{
		{arrowTestCase{"float columns, two batches", floats, func(mem memory.Allocator, s *arrow.Schema) []arrow.RecordBatch {
			return []arrow.RecordBatch{
				testRecord(s, testFloatArray(mem, arrow.PrimitiveTypes.Float64, testF64(1, 3)), testFloatArray(mem, arrow.PrimitiveTypes.Float32, testF64(2, 4))),
				testRecord(s, testFloatArray(mem, arrow.PrimitiveTypes.Float64, testF64(5)), testFloatArray(mem, arrow.PrimitiveTypes.Float32, testF64(-0.5))),
			}
		}}, 3, 2, []float64{1, 2, 3, 4, 5, -0.5}, []string{"a", "b"}},
		{arrowTestCase{"list column beside others", lists, func(mem memory.Allocator, s *arrow.Schema) []arrow.RecordBatch {
			return []arrow.RecordBatch{
				testRecord(s, testStringArray(mem, "p", "q"),
					testListArray(mem, arrow.PrimitiveTypes.Float32, 3, [][]*float64{testF64(1, 2, 3), testF64(4, 5, 6)}),
					testInt64Array(mem, 7, 8), testFloatArray(mem, arrow.PrimitiveTypes.Float64, testF64(9, 9))),
				testRecord(s, testStringArray(mem, "r"),
					testListArray(mem, arrow.PrimitiveTypes.Float32, 3, [][]*float64{testF64(0.25, 0, -1)}),
					testInt64Array(mem, 9), testFloatArray(mem, arrow.PrimitiveTypes.Float64, testF64(9))),
			}
		}}, 3, 3, []float64{1, 2, 3, 4, 5, 6, 0.25, 0, -1}, nil},
		{arrowTestCase{"fixed_shape_tensor (unregistered extension)", tensor, func(mem memory.Allocator, s *arrow.Schema) []arrow.RecordBatch {
			return []arrow.RecordBatch{testRecord(s, testListArray(mem, arrow.PrimitiveTypes.Float64, 3, [][]*float64{testF64(1, 2, 3), testF64(4, 5, 6)}))}
		}}, 2, 3, []float64{1, 2, 3, 4, 5, 6}, nil},
		{arrowTestCase{"registered extension", ext, func(mem memory.Allocator, s *arrow.Schema) []arrow.RecordBatch {
			st := testListArray(mem, arrow.PrimitiveTypes.Float64, 2, [][]*float64{testF64(1, 2), testF64(3, 4)})
			defer st.Release()
			return []arrow.RecordBatch{testRecord(s, array.NewExtensionArrayWithStorage(extType, st))}
		}}, 2, 2, []float64{1, 2, 3, 4}, nil},
	} {
		for _, file := range []bool{true, false} {
			t.Run(fmt.Sprintf("%s/file=%v", tc.name, file), func(t *testing.T) {
				mem := memory.NewCheckedAllocator(memory.NewGoAllocator())
				recs := tc.recs(mem, tc.schema)
				b := testWriteIPC(t, tc.schema, recs, file)
				testRelease(recs)
				mem.AssertSize(t, 0)

				m, err := readArrow(b, "t.arrow", mem)
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				mem.AssertSize(t, 0)
				if m.Rows != tc.rows || m.Cols != tc.cols || !slices.Equal(m.Data, tc.data) || !slices.Equal(m.Names, tc.names) {
					t.Errorf("got %d×%d %v %q, want %d×%d %v %q", m.Rows, m.Cols, m.Data, m.Names, tc.rows, tc.cols, tc.data, tc.names)
				}
				// The public entry point and the file dispatch agree.
				m2, err := ReadArrowIPC(bytes.NewReader(b), "t.arrow")
				if err != nil || !slices.Equal(m2.Data, tc.data) {
					t.Errorf("ReadArrowIPC: %v, %v", m2, err)
				}
			})
		}
	}
}

func TestReadArrowErrors(t *testing.T) {
	nullable := func(name string, dt arrow.DataType) arrow.Field {
		return arrow.Field{Name: name, Type: dt, Nullable: true}
	}
	f64t, f32t := arrow.PrimitiveTypes.Float64, arrow.PrimitiveTypes.Float32
	for _, tc := range []struct {
		arrowTestCase
		sentinel error
		want     []string
	}{
		{arrowTestCase{"null float", arrow.NewSchema([]arrow.Field{nullable("a", f64t), nullable("b", f64t)}, nil), func(mem memory.Allocator, s *arrow.Schema) []arrow.RecordBatch {
			return []arrow.RecordBatch{
				testRecord(s, testFloatArray(mem, f64t, testF64(1)), testFloatArray(mem, f64t, testF64(2))),
				testRecord(s, testFloatArray(mem, f64t, testF64(1, 2)), testFloatArray(mem, f64t, []*float64{testF64(1)[0], nil})),
			}
		}}, ErrFormat, []string{`column "b", row 2`, "null"}},
		{arrowTestCase{"nan float32", arrow.NewSchema([]arrow.Field{nullable("a", f32t)}, nil), func(mem memory.Allocator, s *arrow.Schema) []arrow.RecordBatch {
			return []arrow.RecordBatch{testRecord(s, testFloatArray(mem, f32t, testF64(1, math.NaN())))}
		}}, gdiv.ErrNonFinite, []string{`column "a", row 1`, "NaN"}},
		{arrowTestCase{"null list", arrow.NewSchema([]arrow.Field{nullable("x", arrow.FixedSizeListOf(2, f64t))}, nil), func(mem memory.Allocator, s *arrow.Schema) []arrow.RecordBatch {
			return []arrow.RecordBatch{testRecord(s, testListArray(mem, f64t, 2, [][]*float64{testF64(1, 2), nil}))}
		}}, ErrFormat, []string{`column "x", row 1`, "null"}},
		{arrowTestCase{"null element", arrow.NewSchema([]arrow.Field{nullable("x", arrow.FixedSizeListOf(2, f64t))}, nil), func(mem memory.Allocator, s *arrow.Schema) []arrow.RecordBatch {
			return []arrow.RecordBatch{testRecord(s, testListArray(mem, f64t, 2, [][]*float64{testF64(1, 2), {testF64(3)[0], nil}}))}
		}}, ErrFormat, []string{`column "x", row 1, element 1`, "null"}},
		{arrowTestCase{"inf element", arrow.NewSchema([]arrow.Field{nullable("x", arrow.FixedSizeListOf(2, f32t))}, nil), func(mem memory.Allocator, s *arrow.Schema) []arrow.RecordBatch {
			return []arrow.RecordBatch{testRecord(s, testListArray(mem, f32t, 2, [][]*float64{testF64(math.Inf(1), 2)}))}
		}}, gdiv.ErrNonFinite, []string{`column "x", row 0, element 0`, "+Inf"}},
		{arrowTestCase{"string column", arrow.NewSchema([]arrow.Field{nullable("a", f64t), nullable("name", arrow.BinaryTypes.String)}, nil), func(mem memory.Allocator, s *arrow.Schema) []arrow.RecordBatch {
			return []arrow.RecordBatch{testRecord(s, testFloatArray(mem, f64t, testF64(1)), testStringArray(mem, "z"))}
		}}, ErrFormat, []string{`column "name" has type utf8`}},
		{arrowTestCase{"int list", arrow.NewSchema([]arrow.Field{nullable("x", arrow.FixedSizeListOf(1, arrow.PrimitiveTypes.Int32))}, nil), func(mem memory.Allocator, s *arrow.Schema) []arrow.RecordBatch {
			return []arrow.RecordBatch{testRecord(s, testListArray(mem, arrow.PrimitiveTypes.Int32, 1, [][]*float64{testF64(1)}))}
		}}, ErrFormat, []string{`column "x" has type fixed_size_list`, "int32"}},
		{arrowTestCase{"two lists", arrow.NewSchema([]arrow.Field{nullable("x", arrow.FixedSizeListOf(1, f64t)), nullable("y", arrow.FixedSizeListOf(1, f64t))}, nil), func(mem memory.Allocator, s *arrow.Schema) []arrow.RecordBatch {
			return []arrow.RecordBatch{testRecord(s, testListArray(mem, f64t, 1, [][]*float64{testF64(1)}), testListArray(mem, f64t, 1, [][]*float64{testF64(1)}))}
		}}, ErrFormat, []string{`2 fixed-size-list columns ("x", "y")`}},
		{arrowTestCase{"no batches", arrow.NewSchema([]arrow.Field{nullable("a", f64t)}, nil), func(mem memory.Allocator, s *arrow.Schema) []arrow.RecordBatch {
			return nil
		}}, gdiv.ErrEmpty, []string{"no data rows"}},
		{arrowTestCase{"no columns", arrow.NewSchema(nil, nil), func(mem memory.Allocator, s *arrow.Schema) []arrow.RecordBatch {
			return nil
		}}, gdiv.ErrZeroDim, []string{"no columns"}},
		{arrowTestCase{"unsupported extension", arrow.NewSchema([]arrow.Field{{Name: "t", Type: arrow.PrimitiveTypes.Int64, Metadata: testTensorMeta}}, nil), func(mem memory.Allocator, s *arrow.Schema) []arrow.RecordBatch {
			return []arrow.RecordBatch{testRecord(s, testInt64Array(mem, 1))}
		}}, ErrFormat, []string{`column "t"`, "arrow.fixed_shape_tensor", "int64"}},
	} {
		for _, file := range []bool{true, false} {
			t.Run(fmt.Sprintf("%s/file=%v", tc.name, file), func(t *testing.T) {
				mem := memory.NewCheckedAllocator(memory.NewGoAllocator())
				recs := tc.recs(mem, tc.schema)
				b := testWriteIPC(t, tc.schema, recs, file)
				testRelease(recs)
				m, err := readArrow(b, "t.arrow", mem)
				mem.AssertSize(t, 0)
				if err == nil {
					t.Fatalf("no error, got %+v", m)
				}
				if !errors.Is(err, tc.sentinel) {
					t.Errorf("error %v does not wrap %v", err, tc.sentinel)
				}
				checkReadMessage(t, err, "t.arrow", tc.want)
			})
		}
	}
}

func TestReadArrowCorrupt(t *testing.T) {
	mem := memory.NewGoAllocator()
	s := arrow.NewSchema([]arrow.Field{{Name: "a", Type: arrow.PrimitiveTypes.Float64}}, nil)
	recs := []arrow.RecordBatch{testRecord(s, testFloatArray(mem, arrow.PrimitiveTypes.Float64, testF64(1, 2, 3)))}
	file := testWriteIPC(t, s, recs, true)
	stream := testWriteIPC(t, s, recs, false)
	testRelease(recs)
	for name, b := range map[string][]byte{
		"empty":            nil,
		"magic only":       []byte("ARROW1"),
		"garbage":          []byte("this is not arrow at all"),
		"truncated file":   file[:len(file)/2],
		"truncated stream": stream[:len(stream)-20],
		"file tail cut":    file[:len(file)-3],
	} {
		m, err := readArrow(b, "t.arrow", memory.DefaultAllocator)
		if err == nil {
			// A cut stream can still hold whole, valid batches: then the
			// result must be a valid prefix.
			if name == "truncated stream" && m.Rows <= 3 {
				continue
			}
			t.Errorf("%s: no error, got %+v", name, m)
			continue
		}
		var re *ReadError
		if !errors.As(err, &re) {
			t.Errorf("%s: error %T is not a *ReadError: %v", name, err, err)
		}
	}
}

func TestReadMatrixFileArrow(t *testing.T) {
	mem := memory.NewGoAllocator()
	s := arrow.NewSchema([]arrow.Field{{Name: "a", Type: arrow.PrimitiveTypes.Float64}}, nil)
	recs := []arrow.RecordBatch{testRecord(s, testFloatArray(mem, arrow.PrimitiveTypes.Float64, testF64(1, 2)))}
	file := testWriteIPC(t, s, recs, true)
	stream := testWriteIPC(t, s, recs, false)
	testRelease(recs)
	dir := t.TempDir()
	for name, b := range map[string][]byte{
		"f.arrow": file, "f.feather": file, "s.arrows": stream, "s.ipc": stream, "f.bin": file, "s.bin": stream,
	} {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		m, err := ReadMatrixFile(p)
		if err != nil || m.Rows != 2 || m.Cols != 1 || !slices.Equal(m.Data, []float64{1, 2}) {
			t.Errorf("%s: got %+v, %v", name, m, err)
		}
	}
}

func FuzzReadArrow(f *testing.F) {
	mem := memory.NewGoAllocator()
	floats := arrow.NewSchema([]arrow.Field{{Name: "a", Type: arrow.PrimitiveTypes.Float64}, {Name: "b", Type: arrow.PrimitiveTypes.Float32, Nullable: true}}, nil)
	lists := arrow.NewSchema([]arrow.Field{{Name: "x", Type: arrow.FixedSizeListOf(2, arrow.PrimitiveTypes.Float32), Nullable: true}}, nil)
	for _, file := range []bool{true, false} {
		recs := []arrow.RecordBatch{testRecord(floats, testFloatArray(mem, arrow.PrimitiveTypes.Float64, testF64(1, 2)), testFloatArray(mem, arrow.PrimitiveTypes.Float32, []*float64{testF64(3)[0], nil}))}
		f.Add(testWriteIPC(f, floats, recs, file))
		testRelease(recs)
		recs = []arrow.RecordBatch{testRecord(lists, testListArray(mem, arrow.PrimitiveTypes.Float32, 2, [][]*float64{testF64(1, 2), nil, testF64(math.NaN(), 0)}))}
		f.Add(testWriteIPC(f, lists, recs, file))
		testRelease(recs)
	}
	f.Add([]byte("ARROW1\x00\x00"))
	f.Add([]byte("\xff\xff\xff\xff\x10\x00\x00\x00"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := readArrow(b, "fuzz.arrow", memory.DefaultAllocator)
		if err != nil {
			var re *ReadError
			if !errors.As(err, &re) {
				t.Fatalf("error %T is not a *ReadError: %v", err, err)
			}
			return
		}
		checkReadMatrix(t, m)
	})
}

func TestReadArrowCompressed(t *testing.T) {
	mem := memory.NewCheckedAllocator(memory.NewGoAllocator())
	s := arrow.NewSchema([]arrow.Field{{Name: "x", Type: arrow.FixedSizeListOf(2, arrow.PrimitiveTypes.Float64)}}, nil)
	rows := make([][]*float64, 1000)
	var want []float64
	for i := range rows {
		rows[i] = testF64(float64(i%7), -float64(i%3))
		want = append(want, float64(i%7), -float64(i%3))
	}
	for name, opt := range map[string]ipc.Option{"lz4": ipc.WithLZ4(), "zstd": ipc.WithZstd()} {
		for _, file := range []bool{true, false} {
			rec := testRecord(s, testListArray(mem, arrow.PrimitiveTypes.Float64, 2, rows))
			var buf bytes.Buffer
			if file {
				w, err := ipc.NewFileWriter(&buf, ipc.WithSchema(s), opt)
				if err != nil {
					t.Fatal(err)
				}
				if err := w.Write(rec); err != nil {
					t.Fatal(err)
				}
				w.Close()
			} else {
				w := ipc.NewWriter(&buf, ipc.WithSchema(s), opt)
				if err := w.Write(rec); err != nil {
					t.Fatal(err)
				}
				w.Close()
			}
			rec.Release()
			m, err := readArrow(buf.Bytes(), "c.arrow", mem)
			if err != nil {
				t.Fatalf("%s file=%v: %v", name, file, err)
			}
			if m.Rows != 1000 || m.Cols != 2 || !slices.Equal(m.Data, want) {
				t.Errorf("%s file=%v: wrong data", name, file)
			}
			mem.AssertSize(t, 0)
		}
	}
}

// testSchemaFieldsPos finds, with the package's own flatbuffer reader, the
// position of the length of the schema's fields vector in a flatbuffer whose
// root is a Message (stream) or a Footer (file).
func testSchemaFieldsPos(t *testing.T, b []byte, footer bool) int {
	t.Helper()
	f := &flatBuf{b: b, budget: 1000}
	root, err := f.root()
	if err != nil {
		t.Fatal(err)
	}
	slot := slotMsgHeader
	if footer {
		slot = slotFooterSchema
	}
	sp, err := root.ref(slot)
	if err != nil || sp == 0 {
		t.Fatalf("no schema: %v", err)
	}
	st, err := f.table(sp)
	if err != nil {
		t.Fatal(err)
	}
	p, err := st.ref(slotSchemaFields)
	if err != nil || p == 0 {
		t.Fatalf("no fields: %v", err)
	}
	return p
}

// TestReadArrowForgedLengths: metadata claiming billions of fields must be
// an error, not an out-of-memory crash inside arrow-go.
func TestReadArrowForgedLengths(t *testing.T) {
	mem := memory.NewGoAllocator()
	s := arrow.NewSchema([]arrow.Field{{Name: "a", Type: arrow.PrimitiveTypes.Float64}}, nil)
	recs := []arrow.RecordBatch{testRecord(s, testFloatArray(mem, arrow.PrimitiveTypes.Float64, testF64(1, 2)))}
	stream := testWriteIPC(t, s, recs, false)
	file := testWriteIPC(t, s, recs, true)
	testRelease(recs)

	// Stream: the schema message comes first, after the 8-byte prefix.
	n := int(binary.LittleEndian.Uint32(stream[4:]))
	p := 8 + testSchemaFieldsPos(t, stream[8:8+n], false)
	binary.LittleEndian.PutUint32(stream[p:], 0x7fffffff)

	// File: the footer precedes its int32 length and the closing magic.
	size := int(binary.LittleEndian.Uint32(file[len(file)-10:]))
	start := len(file) - 10 - size
	p = start + testSchemaFieldsPos(t, file[start:len(file)-10], true)
	binary.LittleEndian.PutUint32(file[p:], 0x7fffffff)

	for name, b := range map[string][]byte{"stream": stream, "file": file} {
		_, err := readArrow(b, "forged.arrow", memory.DefaultAllocator)
		if !errors.Is(err, ErrFormat) || !strings.Contains(err.Error(), "corrupt Arrow IPC metadata") {
			t.Errorf("%s: got %v, want a corrupt-metadata ErrFormat", name, err)
		}
	}
}

func TestLimitedAllocator(t *testing.T) {
	a := &arrowLimitAllocator{Allocator: memory.NewGoAllocator(), limit: 100}
	b := a.Allocate(60)
	b = a.Reallocate(90, b)
	func() {
		defer func() {
			if _, ok := recover().(errArrowBudget); !ok {
				t.Errorf("allocation over the limit did not panic with errArrowBudget")
			}
		}()
		a.Allocate(11)
	}()
	a.Free(b)
	if a.used != 0 {
		t.Errorf("used = %d after Free, want 0", a.used)
	}
	a.Free(a.Allocate(100))
}
