package data

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/gdiv/gdiv/gdiv"
)

// testNPYFile builds a .npy file by hand: format version major.0, the given
// header dict literal (padded as NumPy pads it) and raw data bytes.
func testNPYFile(major byte, dict string, data []byte) []byte {
	var b bytes.Buffer
	b.WriteString("\x93NUMPY")
	b.WriteByte(major)
	b.WriteByte(0)
	pre := 10
	if major >= 2 {
		pre = 12
	}
	h := dict
	for (pre+len(h)+1)%64 != 0 {
		h += " "
	}
	h += "\n"
	if major >= 2 {
		binary.Write(&b, binary.LittleEndian, uint32(len(h)))
	} else {
		binary.Write(&b, binary.LittleEndian, uint16(len(h)))
	}
	b.WriteString(h)
	b.Write(data)
	return b.Bytes()
}

func testNPYDict(descr string, fortran bool, shape string) string {
	fo := "False"
	if fortran {
		fo = "True"
	}
	return fmt.Sprintf("{'descr': '%s', 'fortran_order': %s, 'shape': %s, }", descr, fo, shape)
}

// testNPYData encodes vs with the byte order and size of descr.
func testNPYData(descr string, vs ...float64) []byte {
	var order binary.ByteOrder = binary.LittleEndian
	if descr[0] == '>' {
		order = binary.BigEndian
	}
	var b bytes.Buffer
	for _, v := range vs {
		if descr[1:] == "f4" {
			binary.Write(&b, order, float32(v))
		} else {
			binary.Write(&b, order, v)
		}
	}
	return b.Bytes()
}

func TestReadNPYValid(t *testing.T) {
	vals := []float64{1, -2.5, 3, 0.125, 5, 6}
	for _, tc := range []struct {
		name string
		file []byte
		rows int
		cols int
		data []float64
	}{
		{"<f8 v1", testNPYFile(1, testNPYDict("<f8", false, "(2, 3)"), testNPYData("<f8", vals...)), 2, 3, vals},
		{"<f4 v1", testNPYFile(1, testNPYDict("<f4", false, "(3, 2)"), testNPYData("<f4", vals...)), 3, 2, vals},
		{">f8 v2", testNPYFile(2, testNPYDict(">f8", false, "(2, 3)"), testNPYData(">f8", vals...)), 2, 3, vals},
		{">f4 v3", testNPYFile(3, testNPYDict(">f4", false, "(6, 1)"), testNPYData(">f4", vals...)), 6, 1, vals},
		// Column-major storage of [[1, -2.5, 3], [0.125, 5, 6]].
		{"fortran", testNPYFile(1, testNPYDict("<f8", true, "(2, 3)"), testNPYData("<f8", 1, 0.125, -2.5, 5, 3, 6)), 2, 3, vals},
		{"fortran f4", testNPYFile(1, testNPYDict("<f4", true, "(3, 2)"), testNPYData("<f4", 1, 3, 5, -2.5, 0.125, 6)), 3, 2, vals},
		{"double quotes and order", testNPYFile(1, `{"shape": (1, 2), "fortran_order": False, "descr": "<f8"}`, testNPYData("<f8", 7, 8)), 1, 2, []float64{7, 8}},
		{"trailing bytes ignored", testNPYFile(1, testNPYDict("<f8", false, "(1, 1)"), append(testNPYData("<f8", 9), 1, 2, 3)), 1, 1, []float64{9}},
		{"python2 long", testNPYFile(1, testNPYDict("<f8", false, "(1L, 2L)"), testNPYData("<f8", 7, 8)), 1, 2, []float64{7, 8}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, err := ReadNPY(bytes.NewReader(tc.file), "t.npy")
			if err != nil {
				t.Fatalf("unexpected error: %v", err)
			}
			if m.Rows != tc.rows || m.Cols != tc.cols || !slices.Equal(m.Data, tc.data) || m.Names != nil {
				t.Errorf("got %d×%d %v %q, want %d×%d %v", m.Rows, m.Cols, m.Data, m.Names, tc.rows, tc.cols, tc.data)
			}
		})
	}
}

func TestReadNPYLarge(t *testing.T) {
	// More values than one read chunk, to cover the chunked loop.
	const rows, cols = 300, 500
	vs := make([]float64, rows*cols)
	for i := range vs {
		vs[i] = float64(i%977) - 400
	}
	m, err := ReadNPY(bytes.NewReader(testNPYFile(1, testNPYDict("<f8", false, "(300, 500)"), testNPYData("<f8", vs...))), "big.npy")
	if err != nil {
		t.Fatal(err)
	}
	if m.Rows != rows || m.Cols != cols || !slices.Equal(m.Data, vs) {
		t.Errorf("large array read wrongly")
	}
}

func TestReadNPYErrors(t *testing.T) {
	good := testNPYData("<f8", 1, 2, 3, 4)
	for _, tc := range []struct {
		name     string
		file     []byte
		sentinel error
		want     []string
	}{
		{"empty file", nil, ErrFormat, []string{"not a .npy file"}},
		{"bad magic", []byte("\x93NUMPZ\x01\x00\x00\x00"), ErrFormat, []string{"bad magic"}},
		{"version 4", testNPYFile(4, testNPYDict("<f8", false, "(2, 2)"), good), ErrFormat, []string{"version 4.0"}},
		{"truncated header", testNPYFile(1, testNPYDict("<f8", false, "(2, 2)"), nil)[:30], ErrFormat, []string{"header truncated"}},
		{"1-D", testNPYFile(1, testNPYDict("<f8", false, "(4,)"), good), ErrFormat, []string{"shape (4,)", "1-D"}},
		{"0-D", testNPYFile(1, testNPYDict("<f8", false, "()"), good), ErrFormat, []string{"shape ()", "0-D"}},
		{"3-D", testNPYFile(1, testNPYDict("<f8", false, "(1, 2, 2)"), good), ErrFormat, []string{"shape (1, 2, 2)", "3-D"}},
		{"int64", testNPYFile(1, testNPYDict("<i8", false, "(2, 2)"), good), ErrFormat, []string{"dtype \"<i8\""}},
		{"float16", testNPYFile(1, testNPYDict("<f2", false, "(2, 2)"), good), ErrFormat, []string{"dtype \"<f2\""}},
		{"structured", testNPYFile(1, "{'descr': [('a', '<f8')], 'fortran_order': False, 'shape': (2, 2), }", good), ErrFormat, []string{"structured"}},
		{"truncated data", testNPYFile(1, testNPYDict("<f8", false, "(2, 2)"), good[:31]), ErrFormat, []string{"truncated", "needs 32 bytes, found 31"}},
		{"huge shape truncated", testNPYFile(1, testNPYDict("<f8", false, "(1000000000, 1000000000)"), good), ErrFormat, []string{"truncated"}},
		{"overflowing shape", testNPYFile(1, testNPYDict("<f8", false, "(9223372036854775807, 3)"), good), ErrFormat, []string{"too large"}},
		{"negative shape", testNPYFile(1, testNPYDict("<f8", false, "(-1, 2)"), good), ErrFormat, []string{"bad .npy header"}},
		{"missing key", testNPYFile(1, "{'descr': '<f8', 'shape': (2, 2)}", good), ErrFormat, []string{"fortran_order"}},
		{"garbage header", testNPYFile(1, "{'descr': '<f8', oops}", good), ErrFormat, []string{"bad .npy header"}},
		{"no rows", testNPYFile(1, testNPYDict("<f8", false, "(0, 3)"), nil), gdiv.ErrEmpty, []string{"shape (0, 3)"}},
		{"no cols", testNPYFile(1, testNPYDict("<f8", false, "(3, 0)"), nil), gdiv.ErrZeroDim, []string{"shape (3, 0)"}},
		{"nan", testNPYFile(1, testNPYDict("<f8", false, "(2, 2)"), testNPYData("<f8", 1, 2, 3, math.NaN())), gdiv.ErrNonFinite, []string{"row 1, column 1", "NaN"}},
		{"inf f4 big-endian", testNPYFile(1, testNPYDict(">f4", false, "(2, 2)"), testNPYData(">f4", 1, math.Inf(-1), 3, 4)), gdiv.ErrNonFinite, []string{"row 0, column 1", "-Inf"}},
		{"nan fortran", testNPYFile(1, testNPYDict("<f8", true, "(2, 2)"), testNPYData("<f8", 1, math.NaN(), 3, 4)), gdiv.ErrNonFinite, []string{"row 1, column 0"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, err := ReadNPY(bytes.NewReader(tc.file), "t.npy")
			if err == nil {
				t.Fatalf("no error, got %+v", m)
			}
			if !errors.Is(err, tc.sentinel) {
				t.Errorf("error %v does not wrap %v", err, tc.sentinel)
			}
			checkReadMessage(t, err, "t.npy", tc.want)
		})
	}
}

func TestReadMatrixFileNPY(t *testing.T) {
	dir := t.TempDir()
	file := testNPYFile(1, testNPYDict("<f8", false, "(1, 2)"), testNPYData("<f8", 3, 4))
	for _, name := range []string{"a.npy", "a.bin"} { // by extension, by magic
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, file, 0o644); err != nil {
			t.Fatal(err)
		}
		m, err := ReadMatrixFile(p)
		if err != nil || !slices.Equal(m.Data, []float64{3, 4}) {
			t.Errorf("%s: got %+v, %v", name, m, err)
		}
	}
}

func FuzzReadNPY(f *testing.F) {
	f.Add(testNPYFile(1, testNPYDict("<f8", false, "(2, 2)"), testNPYData("<f8", 1, 2, 3, 4)))
	f.Add(testNPYFile(2, testNPYDict(">f4", true, "(2, 1)"), testNPYData(">f4", 1, 2)))
	f.Add(testNPYFile(3, testNPYDict("<f8", false, "(1, 1)"), testNPYData("<f8", math.NaN())))
	f.Add(testNPYFile(1, testNPYDict("<f8", false, "(3,)"), testNPYData("<f8", 1, 2, 3)))
	f.Add(testNPYFile(1, testNPYDict("<i4", false, "(1, 1)"), []byte{1, 0, 0, 0}))
	f.Add(testNPYFile(1, testNPYDict("<f8", false, "(100000, 100000)"), nil))
	f.Add(testNPYFile(1, "{'descr': ((((((('", nil))
	f.Add([]byte("\x93NUMPY\x02\x00\xff\xff\xff\xff"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := ReadNPY(bytes.NewReader(b), "fuzz.npy")
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
