package data

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// ErrFormat: a matrix file is malformed or of a kind the readers do not
// support (bad number, ragged row, unsupported dtype or column type,
// truncated data). Test with errors.Is; the *ReadError says where.
var ErrFormat = errors.New("gdiv: malformed or unsupported matrix file")

// ErrTooLarge: the input is larger than the reader's byte limit
// (ReadMatrixFileLimit, ReadDatasetLimit). Test with errors.Is.
var ErrTooLarge = errors.New("gdiv: input larger than the size limit")

// ReadError reports a problem found while reading a matrix file. Its Err is
// one of the sentinels ErrFormat, ErrNonFinite, ErrEmpty or ErrZeroDim, so
// errors.Is(err, ErrNonFinite) and friends work on it.
//
// Msg names the position and the offending text: CSV errors give the 1-based
// line and column ("line 3, column 2: not a number: \"abc\""), which are
// also in Line and Column; the binary readers (.npy, Arrow) name 0-based row
// and column indices, as NumPy and Arrow index them, and leave Line and
// Column zero.
type ReadError struct {
	Name   string // file name as given to the reader ("<stdin>" for standard input)
	Line   int    // 1-based line (CSV), 0 when not applicable
	Column int    // 1-based column (CSV), 0 when not applicable
	Msg    string // what is wrong and where
	Err    error  // sentinel: ErrFormat, ErrNonFinite, ErrEmpty or ErrZeroDim
}

// Error returns "gdiv: NAME: MSG".
func (e *ReadError) Error() string {
	if e.Name == "" {
		return "gdiv: " + e.Msg
	}
	return "gdiv: " + e.Name + ": " + e.Msg
}

// Unwrap returns the sentinel error.
func (e *ReadError) Unwrap() error { return e.Err }

func newReadError(name string, sentinel error, format string, args ...any) error {
	return &ReadError{Name: name, Msg: fmt.Sprintf(format, args...), Err: sentinel}
}

// Matrix is a dense row-major float64 matrix read from a file: one example
// (gradient or feature vector) per row. Entry (i, j) is Data[i*Cols+j].
// Every matrix returned by the readers has Rows ≥ 1, Cols ≥ 1 and only
// finite entries.
type Matrix struct {
	Rows, Cols int
	Data       []float64
	// Names holds the column names from a CSV header or an Arrow schema,
	// len(Names) == Cols, or nil when the file has none.
	Names []string
}

// Row returns row i as a sub-slice of Data (not a copy).
// It panics if i is out of range.
func (m *Matrix) Row(i int) []float64 {
	if i < 0 || i >= m.Rows {
		panic(fmt.Sprintf("gdiv: row %d out of range [0, %d)", i, m.Rows))
	}
	return m.Data[i*m.Cols : (i+1)*m.Cols : (i+1)*m.Cols]
}

// At returns entry (i, j). It panics if i or j is out of range.
func (m *Matrix) At(i, j int) float64 {
	if i < 0 || i >= m.Rows || j < 0 || j >= m.Cols {
		panic(fmt.Sprintf("gdiv: index (%d, %d) out of range for a %d×%d matrix", i, j, m.Rows, m.Cols))
	}
	return m.Data[i*m.Cols+j]
}

// SelectColumns returns a new matrix holding the columns named by spec, in
// the order given. spec is a comma-separated list of items; each item is
//
//	an index         "3", "-1"          (0-based; negative counts from the end)
//	a slice          "0:64", ":-1", "::2", "10:"  (Python semantics: start:stop[:step],
//	                                     stop excluded; unlike Python, an end
//	                                     outside -n..n is an error, not clipped)
//	a column name    "label"            (from a CSV header or Arrow schema)
//
// An item that parses as an integer is always an index, never a name.
// Columns may repeat. It returns an error wrapping ErrParam when spec is
// malformed, an index is out of range, a name is unknown, or the selection
// is empty.
func (m *Matrix) SelectColumns(spec string) (*Matrix, error) {
	cols, err := m.columnIndices(spec)
	if err != nil {
		return nil, err
	}
	out := &Matrix{Rows: m.Rows, Cols: len(cols), Data: make([]float64, m.Rows*len(cols))}
	if m.Names != nil {
		out.Names = make([]string, len(cols))
		for k, j := range cols {
			out.Names[k] = m.Names[j]
		}
	}
	for i := 0; i < m.Rows; i++ {
		src := m.Data[i*m.Cols : (i+1)*m.Cols]
		dst := out.Data[i*len(cols) : (i+1)*len(cols)]
		for k, j := range cols {
			dst[k] = src[j]
		}
	}
	return out, nil
}

func (m *Matrix) columnIndices(spec string) ([]int, error) {
	if strings.TrimSpace(spec) == "" {
		return nil, paramErr("empty column selection")
	}
	var cols []int
	for _, item := range strings.Split(spec, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			return nil, paramErr("column selection %q has an empty item", spec)
		}
		if k, err := strconv.Atoi(item); err == nil {
			j := k
			if j < 0 {
				j += m.Cols
			}
			if j < 0 || j >= m.Cols {
				return nil, paramErr("column index %d out of range: the matrix has %d columns (valid: 0..%d or -%d..-1)", k, m.Cols, m.Cols-1, m.Cols)
			}
			cols = append(cols, j)
			continue
		}
		if j := columnIndexOf(m.Names, item); j >= 0 {
			cols = append(cols, j)
			continue
		}
		if strings.Contains(item, ":") {
			js, err := columnSlice(item, m.Cols)
			if err != nil {
				return nil, err
			}
			cols = append(cols, js...)
			continue
		}
		if m.Names == nil {
			return nil, paramErr("column %q: not an index or slice, and the file has no column names", item)
		}
		return nil, paramErr("no column named %q (columns: %s)", item, abbreviateNames(m.Names, 8))
	}
	if len(cols) == 0 {
		return nil, paramErr("column selection %q selects no columns", spec)
	}
	return cols, nil
}

func columnIndexOf(names []string, s string) int {
	for j, n := range names {
		if n == s {
			return j
		}
	}
	return -1
}

func abbreviateNames(names []string, k int) string {
	if len(names) <= k {
		return strings.Join(names, ", ")
	}
	return strings.Join(names[:k], ", ") + fmt.Sprintf(", ... (%d in all)", len(names))
}

// columnSlice expands a Python slice "start:stop[:step]" over n columns.
func columnSlice(item string, n int) ([]int, error) {
	parts := strings.Split(item, ":")
	if len(parts) > 3 {
		return nil, paramErr("bad column slice %q: want start:stop or start:stop:step", item)
	}
	var v [3]int
	var set [3]bool
	for k, p := range parts {
		p = strings.TrimSpace(p)
		if p == "" {
			continue
		}
		x, err := strconv.Atoi(p)
		if err != nil {
			return nil, paramErr("bad column slice %q: %q is not an integer", item, p)
		}
		v[k], set[k] = x, true
	}
	step := 1
	if set[2] {
		step = v[2]
	}
	if step == 0 {
		return nil, paramErr("bad column slice %q: step is zero", item)
	}
	// Python clips out-of-range ends ("0:99" on 3 columns is "0:3"); here a
	// typo or a wrong file must not select fewer columns silently.
	for k, what := range []string{"start", "stop"} {
		if set[k] && (v[k] < -n || v[k] > n) {
			return nil, paramErr("column slice %q: %s %d is out of range: the matrix has %d columns (valid: -%d..%d)", item, what, v[k], n, n, n)
		}
	}
	// Python's slice.indices.
	norm := func(x, lo, hi int) int {
		if x < 0 {
			x += n
			if x < lo {
				x = lo
			}
		} else if x > hi {
			x = hi
		}
		return x
	}
	var start, stop int
	if step > 0 {
		start, stop = 0, n
		if set[0] {
			start = norm(v[0], 0, n)
		}
		if set[1] {
			stop = norm(v[1], 0, n)
		}
	} else {
		start, stop = n-1, -1
		if set[0] {
			start = norm(v[0], -1, n-1)
		}
		if set[1] {
			stop = norm(v[1], -1, n-1)
		}
	}
	var js []int
	for j := start; (step > 0 && j < stop) || (step < 0 && j > stop); j += step {
		js = append(js, j)
	}
	return js, nil
}

// Magic prefixes used to sniff a file's format.
var (
	npyMagic   = []byte("\x93NUMPY")
	arrowMagic = []byte("ARROW1")
)

// ReadMatrixFile reads a matrix from path, choosing the format by extension:
//
//	.csv .txt   comma-separated text (ReadCSV)
//	.tsv        tab-separated text
//	.npy        NumPy array (ReadNPY)
//	.arrow .ipc .feather .arrows   Arrow IPC, file or stream format (ReadArrowIPC)
//
// Any other extension is sniffed: the NumPy magic "\x93NUMPY" selects .npy,
// "ARROW1" or an IPC stream prefix selects Arrow, anything else is read as
// CSV. The path "-" reads CSV from os.Stdin.
//
// Errors are *ReadError values (wrapping ErrFormat, ErrNonFinite, ErrEmpty
// or ErrZeroDim) or the *os.PathError of opening the file.
func ReadMatrixFile(path string) (*Matrix, error) {
	return ReadMatrixFileLimit(path, 0)
}

// ReadMatrixFileLimit is ReadMatrixFile reading at most maxBytes bytes of
// input (maxBytes ≤ 0: no limit). A regular file larger than maxBytes is
// refused before anything is read; a stream (standard input, a pipe, a
// device such as /dev/zero) is read until it passes the limit. Either way
// the error is a *ReadError wrapping ErrTooLarge. Parsed CSV text (8 bytes
// per number, up to 4 times the text) is held to the same limit.
func ReadMatrixFileLimit(path string, maxBytes int64) (*Matrix, error) {
	if path == "-" {
		return ReadCSVLimit(os.Stdin, "<stdin>", maxBytes)
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if st, err := f.Stat(); err == nil {
		if st.IsDir() {
			return nil, newReadError(path, ErrFormat, "is a directory, not a matrix file")
		}
		if maxBytes > 0 && st.Mode().IsRegular() && st.Size() > maxBytes {
			return nil, tooLarge(path, maxBytes, fmt.Sprintf("is %d bytes", st.Size()))
		}
	}
	var read func(io.Reader) (*Matrix, error)
	switch strings.ToLower(filepath.Ext(path)) {
	case ".csv", ".txt":
		read = func(r io.Reader) (*Matrix, error) { return readDelimited(r, path, ',', maxBytes) }
	case ".tsv", ".tab":
		read = func(r io.Reader) (*Matrix, error) { return readDelimited(r, path, '\t', maxBytes) }
	case ".npy":
		read = func(r io.Reader) (*Matrix, error) { return ReadNPY(r, path) }
	case ".arrow", ".ipc", ".feather", ".arrows":
		read = func(r io.Reader) (*Matrix, error) { return ReadArrowIPC(r, path) }
	default:
		read = func(r io.Reader) (*Matrix, error) { return readMatrix(r, path, maxBytes) }
	}
	return readLimited(f, path, maxBytes, read)
}

// ReadCSVLimit is ReadCSV reading at most maxBytes bytes of r (maxBytes ≤
// 0: no limit); past the limit it returns a *ReadError wrapping ErrTooLarge.
func ReadCSVLimit(r io.Reader, name string, maxBytes int64) (*Matrix, error) {
	return readLimited(r, name, maxBytes, func(r io.Reader) (*Matrix, error) { return readDelimited(r, name, ',', maxBytes) })
}

// readLimited runs read on r cut off after maxBytes bytes (≤ 0: no limit);
// a read past the limit fails, and whatever error the reader then reports
// becomes an ErrTooLarge *ReadError.
func readLimited(r io.Reader, name string, maxBytes int64, read func(io.Reader) (*Matrix, error)) (*Matrix, error) {
	if maxBytes <= 0 {
		return read(r)
	}
	lr := &limitReader{r: r, left: maxBytes}
	m, err := read(lr)
	if lr.over {
		return nil, tooLarge(name, maxBytes, "has more")
	}
	return m, err
}

func tooLarge(name string, maxBytes int64, what string) error {
	return newReadError(name, ErrTooLarge, "%s than the limit of %d bytes; raise the limit to read it", what, maxBytes)
}

// limitReader reads at most left bytes from r, then fails with
// ErrTooLarge (unlike io.LimitReader, which reports a silent EOF) and sets
// over.
type limitReader struct {
	r    io.Reader
	left int64
	over bool
}

func (l *limitReader) Read(p []byte) (int, error) {
	if l.left <= 0 {
		// One byte more tells a stream that ends exactly at the limit from
		// one that goes on.
		var one [1]byte
		n, err := l.r.Read(one[:])
		if n > 0 {
			l.over = true
			return 0, ErrTooLarge
		}
		return 0, err
	}
	if int64(len(p)) > l.left {
		p = p[:l.left]
	}
	n, err := l.r.Read(p)
	l.left -= int64(n)
	return n, err
}

// ReadMatrix reads a matrix from r, sniffing the format from its first bytes
// as ReadMatrixFile does for an unknown extension. name is used in errors.
func ReadMatrix(r io.Reader, name string) (*Matrix, error) {
	return readMatrix(r, name, 0)
}

func readMatrix(r io.Reader, name string, maxBytes int64) (*Matrix, error) {
	br := bufio.NewReader(r)
	head, _ := br.Peek(8)
	switch {
	case bytes.HasPrefix(head, npyMagic):
		return ReadNPY(br, name)
	case bytes.HasPrefix(head, arrowMagic), isArrowStreamPrefix(head):
		return ReadArrowIPC(br, name)
	}
	return readDelimited(br, name, ',', maxBytes)
}

// isArrowStreamPrefix reports whether b starts like an Arrow IPC stream: the
// continuation marker 0xFFFFFFFF followed by a metadata length.
func isArrowStreamPrefix(b []byte) bool {
	return len(b) >= 8 && b[0] == 0xff && b[1] == 0xff && b[2] == 0xff && b[3] == 0xff
}
