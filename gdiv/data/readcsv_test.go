package data

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/gdiv/gdiv/gdiv"
)

func TestReadCSVValid(t *testing.T) {
	for _, tc := range []struct {
		name  string
		in    string
		rows  int
		cols  int
		data  []float64
		names []string
	}{
		{"plain", "1,2\n3,4\n", 2, 2, []float64{1, 2, 3, 4}, nil},
		{"no final newline", "1,2\n3,4", 2, 2, []float64{1, 2, 3, 4}, nil},
		{"crlf", "1,2\r\n3,4\r\n", 2, 2, []float64{1, 2, 3, 4}, nil},
		{"header", "a,b\n1,2\n", 1, 2, []float64{1, 2}, []string{"a", "b"}},
		{"header partly numeric", "x,1\n1,2\n", 1, 2, []float64{1, 2}, []string{"x", "1"}},
		{"quoted header", "\"a,b\",c\n1,2\n", 1, 2, []float64{1, 2}, []string{"a,b", "c"}},
		{"spaces", " 1 ,\t2 \n  3,4  \n", 2, 2, []float64{1, 2, 3, 4}, nil},
		{"blank trailing lines", "1,2\n3,4\n\n\n  \n\r\n", 2, 2, []float64{1, 2, 3, 4}, nil},
		{"one column", "5\n-6.5\n1e-3\n", 3, 1, []float64{5, -6.5, 1e-3}, nil},
		{"bom", "\ufeffa,b\n1,2\n", 1, 2, []float64{1, 2}, []string{"a", "b"}},
		{"exponents and signs", "+1.5e2,-0,0x1p-2\n", 1, 3, []float64{150, 0, 0.25}, nil},
		{"underflow", "1e-400,1\n", 1, 2, []float64{0, 1}, nil},
		{"quoted numbers", "\"1\",\"2\"\n", 1, 2, []float64{1, 2}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, err := ReadCSV(strings.NewReader(tc.in), "t.csv")
			if err != nil {
				t.Fatalf("unexpected error: %v", err)
			}
			if m.Rows != tc.rows || m.Cols != tc.cols {
				t.Fatalf("shape %d×%d, want %d×%d", m.Rows, m.Cols, tc.rows, tc.cols)
			}
			if !slices.Equal(m.Data, tc.data) {
				t.Errorf("data %v, want %v", m.Data, tc.data)
			}
			if !slices.Equal(m.Names, tc.names) {
				t.Errorf("names %q, want %q", m.Names, tc.names)
			}
		})
	}
}

func TestReadCSVErrors(t *testing.T) {
	for _, tc := range []struct {
		name     string
		in       string
		sentinel error
		line     int
		col      int
		want     []string // substrings of the message
	}{
		{"empty", "", gdiv.ErrEmpty, 0, 0, []string{"t.csv", "empty"}},
		{"only blank lines", "\n\n \n", gdiv.ErrEmpty, 0, 0, []string{"empty"}},
		{"header only", "a,b,c\n", gdiv.ErrEmpty, 0, 0, []string{"only a header"}},
		{"non-numeric", "1,2\n3,abc\n", ErrFormat, 2, 2, []string{"t.csv", "line 2, column 2", `"abc"`}},
		{"empty cell", "1,2\n3,,4\n", ErrFormat, 0, 0, []string{"line 2 has 3 columns, expected 2"}},
		{"empty cell same width", "1,2,3\n3,,4\n", ErrFormat, 2, 2, []string{"line 2, column 2: empty cell"}},
		{"ragged long", "1,2,3,4\n1,2,3,4\n1,2,3\n", ErrFormat, 3, 0, []string{"line 3 has 3 columns, expected 4"}},
		{"ragged vs header", "a,b\n1,2,3\n", ErrFormat, 2, 0, []string{"line 2 has 3 columns, expected 2", "header"}},
		{"nan", "1,2\n3,nan\n", gdiv.ErrNonFinite, 2, 2, []string{"line 2, column 2", `"nan"`}},
		{"NaN first line", "NaN,1\n", gdiv.ErrNonFinite, 1, 1, []string{"line 1, column 1", `"NaN"`}},
		{"inf", "1,2\n-Inf,2\n", gdiv.ErrNonFinite, 2, 1, []string{"line 2, column 1", `"-Inf"`}},
		{"infinity", "1,+infinity\n", gdiv.ErrNonFinite, 1, 2, []string{"line 1, column 2"}},
		{"overflow", "1,2\n1e999,2\n", gdiv.ErrNonFinite, 2, 1, []string{"line 2, column 1", `"1e999"`, "range"}},
		{"crlf ragged", "1,2\r\n3\r\n", ErrFormat, 2, 0, []string{"line 2 has 1 column, expected 2"}},
		{"bare quote", "1,2\n3,4\"5\n", ErrFormat, 2, 0, []string{"line 2"}},
		{"blank line counted", "1,2\n\n3,x\n", ErrFormat, 3, 2, []string{"line 3, column 2"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, err := ReadCSV(strings.NewReader(tc.in), "t.csv")
			if err == nil {
				t.Fatalf("no error, got %+v", m)
			}
			if !errors.Is(err, tc.sentinel) {
				t.Errorf("error %v does not wrap %v", err, tc.sentinel)
			}
			var re *ReadError
			if !errors.As(err, &re) {
				t.Fatalf("error %T is not a *ReadError", err)
			}
			if tc.line != 0 && re.Line != tc.line {
				t.Errorf("Line = %d, want %d", re.Line, tc.line)
			}
			if tc.col != 0 && re.Column != tc.col {
				t.Errorf("Column = %d, want %d", re.Column, tc.col)
			}
			checkReadMessage(t, err, "t.csv", tc.want)
			msg := err.Error()
			if strings.Contains(msg, "\n") {
				t.Errorf("message %q spans several lines", msg)
			}
		})
	}
}

func TestReadMatrixFileCSV(t *testing.T) {
	dir := t.TempDir()
	write := func(name, s string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	for _, name := range []string{"a.csv", "a.txt", "a.CSV", "a.data", "noext"} {
		m, err := ReadMatrixFile(write(name, "x,y\n1,2\n3,4\n"))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if m.Rows != 2 || m.Cols != 2 || !slices.Equal(m.Data, []float64{1, 2, 3, 4}) || !slices.Equal(m.Names, []string{"x", "y"}) {
			t.Errorf("%s: got %+v", name, m)
		}
	}
	m, err := ReadMatrixFile(write("a.tsv", "x\ty\n1\t2\n"))
	if err != nil || !slices.Equal(m.Data, []float64{1, 2}) || !slices.Equal(m.Names, []string{"x", "y"}) {
		t.Errorf("tsv: got %+v, %v", m, err)
	}
	if _, err := ReadMatrixFile(filepath.Join(dir, "missing.csv")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: got %v, want os.ErrNotExist", err)
	}
	if _, err := ReadMatrixFile(dir); !errors.Is(err, ErrFormat) {
		t.Errorf("directory: got %v, want ErrFormat", err)
	}
}

func TestSelectColumns(t *testing.T) {
	m := &Matrix{Rows: 2, Cols: 4, Data: []float64{0, 1, 2, 3, 10, 11, 12, 13}, Names: []string{"a", "b", "c", "label"}}
	for _, tc := range []struct {
		spec string
		cols []int
	}{
		{"0:3", []int{0, 1, 2}},
		{":-1", []int{0, 1, 2}},
		{"1:", []int{1, 2, 3}},
		{"::2", []int{0, 2}},
		{"::-1", []int{3, 2, 1, 0}},
		{"-1", []int{3}},
		{"label,a", []int{3, 0}},
		{"0:4", []int{0, 1, 2, 3}},
		{"-4:2", []int{0, 1}},
		{"3:1:-1", []int{3, 2}},
		{" 1 , 1 ", []int{1, 1}},
		{"0:2,label", []int{0, 1, 3}},
	} {
		s, err := m.SelectColumns(tc.spec)
		if err != nil {
			t.Errorf("%q: %v", tc.spec, err)
			continue
		}
		if s.Rows != 2 || s.Cols != len(tc.cols) {
			t.Errorf("%q: shape %d×%d", tc.spec, s.Rows, s.Cols)
			continue
		}
		var want []float64
		var names []string
		for i := 0; i < 2; i++ {
			for _, j := range tc.cols {
				want = append(want, m.At(i, j))
			}
		}
		for _, j := range tc.cols {
			names = append(names, m.Names[j])
		}
		if !slices.Equal(s.Data, want) || !slices.Equal(s.Names, names) {
			t.Errorf("%q: got %v %q, want %v %q", tc.spec, s.Data, s.Names, want, names)
		}
	}
	// Out-of-range slice ends are refused, not clipped as Python clips them.
	for _, spec := range []string{"", "4", "-5", "nope", "0:4:0", "1:1", "a:b:c:d", "0:x", "0,,1", "0:100", "-100:2", "5:", "::-1,0:99"} {
		if _, err := m.SelectColumns(spec); !errors.Is(err, gdiv.ErrParam) {
			t.Errorf("%q: got %v, want ErrParam", spec, err)
		}
	}
	noNames := &Matrix{Rows: 1, Cols: 2, Data: []float64{1, 2}}
	if _, err := noNames.SelectColumns("label"); err == nil || !strings.Contains(err.Error(), "no column names") {
		t.Errorf("no names: got %v", err)
	}
}

func FuzzReadCSV(f *testing.F) {
	for _, s := range []string{
		"1,2\n3,4\n", "a,b\n1,2\n", "1,2\r\n3,4\r\n", "", "\n", "a\n", "1,nan\n", "1,2\n3\n",
		"\"1\",\"2\"\n", "\"unterminated\n", "\ufeff1\n", "1e999\n", "0x1p-2,1_0\n", ",\n", "1,2,\n3,4,\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := ReadCSV(strings.NewReader(string(b)), "fuzz.csv")
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

// checkReadMatrix verifies the invariants every successfully read Matrix has.
func checkReadMatrix(t *testing.T, m *Matrix) {
	t.Helper()
	if m.Rows < 1 || m.Cols < 1 || len(m.Data) != m.Rows*m.Cols {
		t.Fatalf("bad shape: %d×%d with %d values", m.Rows, m.Cols, len(m.Data))
	}
	if m.Names != nil && len(m.Names) != m.Cols {
		t.Fatalf("%d names for %d columns", len(m.Names), m.Cols)
	}
	for k, v := range m.Data {
		if v-v != 0 {
			t.Fatalf("non-finite value %v at %d", v, k)
		}
	}
}

// checkReadMessage checks that a reader error names the file (prefix
// "gdiv: NAME: ") and contains every fragment of want.
func checkReadMessage(t *testing.T, err error, name string, want []string) {
	t.Helper()
	msg := err.Error()
	if !strings.HasPrefix(msg, "gdiv: "+name+": ") {
		t.Errorf("message %q does not start with the file name", msg)
	}
	for _, w := range want {
		if !strings.Contains(msg, w) {
			t.Errorf("message %q does not contain %q", msg, w)
		}
	}
}

// The byte limit: a stream exactly at the limit is read, one byte more is
// ErrTooLarge (not a silent truncation), a larger regular file is refused
// before reading; binary data is refused at once.
func TestReadLimit(t *testing.T) {
	text := "1.0000000000,2.0000000000\n3.0000000000,4.0000000000\n" // 52 bytes of text, 32 parsed
	n := int64(len(text))
	if m, err := ReadCSVLimit(strings.NewReader(text), "s", n); err != nil || m.Rows != 2 {
		t.Errorf("at the limit: %v, %v", m, err)
	}
	if _, err := ReadCSVLimit(strings.NewReader(text), "s", n-1); !errors.Is(err, ErrTooLarge) {
		t.Errorf("one byte over: got %v, want ErrTooLarge", err)
	}
	p := filepath.Join(t.TempDir(), "m.csv")
	if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadMatrixFileLimit(p, n-1); !errors.Is(err, ErrTooLarge) || !strings.Contains(err.Error(), "52 bytes") {
		t.Errorf("file over the limit: got %v", err)
	}
	if _, err := ReadDatasetLimit(p, "", -1, n-1); !errors.Is(err, ErrTooLarge) {
		t.Errorf("dataset over the limit: got %v", err)
	}
	if m, err := ReadMatrixFileLimit(p, 0); err != nil || m.Rows != 2 {
		t.Errorf("no limit: %v, %v", m, err)
	}
	if _, err := ReadCSV(strings.NewReader("1,2\n\x00\x00\x00"), "z"); !errors.Is(err, ErrFormat) || !strings.Contains(err.Error(), "binary data") {
		t.Errorf("NUL bytes: got %v", err)
	}
}

// Parsed CSV takes 4 times its text ("1,2\n": 16 bytes of float64 from 4 of
// text); the limit holds for the parsed values too.
func TestReadLimitParsed(t *testing.T) {
	text := strings.Repeat("1,2\n", 100)
	if _, err := ReadCSVLimit(strings.NewReader(text), "s", 1000); !errors.Is(err, ErrTooLarge) || !strings.Contains(err.Error(), "parsed values") {
		t.Errorf("got %v, want ErrTooLarge for the parsed values", err)
	}
	if m, err := ReadCSVLimit(strings.NewReader(text), "s", 1600); err != nil || m.Rows != 100 {
		t.Errorf("at the limit: %v", err)
	}
}
