package data

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"

	"github.com/gdiv/gdiv/gdiv"
)

// maxNPYHeader bounds the header length a .npy file may declare (NumPy
// itself refuses headers over 10 000 bytes unless told otherwise).
const maxNPYHeader = 1 << 20

// ReadNPY reads a 2-D float array in NumPy's .npy format (format versions
// 1.0, 2.0 and 3.0). name is used in error messages.
//
// Supported dtypes are '<f8', '<f4', '>f8' and '>f4' (float32 is widened to
// float64, big-endian data is converted). A Fortran-ordered array
// (fortran_order: True) is transposed into row-major order. Extra bytes
// after the array data are ignored, as numpy.load does.
//
// Errors are *ReadError values: ErrFormat for a bad magic or header, an
// unsupported dtype (named), a shape that is not 2-D (named) or truncated
// data; ErrNonFinite naming the 0-based row and column of a NaN or Inf;
// ErrEmpty for zero rows and ErrZeroDim for zero columns.
func ReadNPY(r io.Reader, name string) (*Matrix, error) {
	br := bufio.NewReaderSize(r, 1<<16)
	var pre [8]byte
	if n, err := io.ReadFull(br, pre[:]); err != nil {
		return nil, newReadError(name, ErrFormat, "not a .npy file: only %d bytes", n)
	}
	if !bytes.Equal(pre[:6], npyMagic) {
		return nil, newReadError(name, ErrFormat, "not a .npy file: bad magic %q (want \"\\x93NUMPY\")", pre[:6])
	}
	major, minor := pre[6], pre[7]
	var hlen int
	switch major {
	case 1:
		var b [2]byte
		if _, err := io.ReadFull(br, b[:]); err != nil {
			return nil, newReadError(name, ErrFormat, ".npy header truncated")
		}
		hlen = int(binary.LittleEndian.Uint16(b[:]))
	case 2, 3:
		var b [4]byte
		if _, err := io.ReadFull(br, b[:]); err != nil {
			return nil, newReadError(name, ErrFormat, ".npy header truncated")
		}
		h := binary.LittleEndian.Uint32(b[:])
		if h > maxNPYHeader {
			return nil, newReadError(name, ErrFormat, ".npy header length %d exceeds %d bytes", h, maxNPYHeader)
		}
		hlen = int(h)
	default:
		return nil, newReadError(name, ErrFormat, "unsupported .npy format version %d.%d (supported: 1.0, 2.0, 3.0)", major, minor)
	}
	hdr := make([]byte, hlen)
	if _, err := io.ReadFull(br, hdr); err != nil {
		return nil, newReadError(name, ErrFormat, ".npy header truncated: want %d bytes", hlen)
	}
	h, err := parseNPYHeader(string(hdr))
	if err != nil {
		return nil, newReadError(name, ErrFormat, "bad .npy header %q: %v", clipText(strings.TrimSpace(string(hdr))), err)
	}

	var size int
	var order binary.ByteOrder
	switch h.descr {
	case "<f8":
		size, order = 8, binary.LittleEndian
	case ">f8":
		size, order = 8, binary.BigEndian
	case "<f4":
		size, order = 4, binary.LittleEndian
	case ">f4":
		size, order = 4, binary.BigEndian
	default:
		return nil, newReadError(name, ErrFormat, "unsupported .npy dtype %q: need a float array ('<f8', '<f4', '>f8' or '>f4')", clipText(h.descr))
	}
	if len(h.shape) != 2 {
		return nil, newReadError(name, ErrFormat, ".npy array has shape %s (%d-D): need a 2-D array, one example per row", npyShapeString(h.shape), len(h.shape))
	}
	rows, cols := h.shape[0], h.shape[1]
	if rows == 0 {
		return nil, newReadError(name, gdiv.ErrEmpty, ".npy array has shape %s: no rows", npyShapeString(h.shape))
	}
	if cols == 0 {
		return nil, newReadError(name, gdiv.ErrZeroDim, ".npy array has shape %s: rows have no columns", npyShapeString(h.shape))
	}
	if rows > math.MaxInt/cols || rows*cols > math.MaxInt/size {
		return nil, newReadError(name, ErrFormat, ".npy array shape %s is too large", npyShapeString(h.shape))
	}
	total := rows * cols

	// Read in chunks so a header that promises more than the file holds
	// costs no more memory than the file itself.
	const chunk = 1 << 16 // values per read
	data := make([]float64, 0, min(total, chunk))
	buf := make([]byte, min(total, chunk)*size)
	for len(data) < total {
		k := min(total-len(data), chunk)
		b := buf[:k*size]
		if n, err := io.ReadFull(br, b); err != nil {
			got := len(data)*size + n
			return nil, newReadError(name, ErrFormat, ".npy data truncated: shape %s of %s needs %d bytes, found %d",
				npyShapeString(h.shape), h.descr, total*size, got)
		}
		if size == 8 {
			for i := 0; i < k; i++ {
				data = append(data, math.Float64frombits(order.Uint64(b[8*i:])))
			}
		} else {
			for i := 0; i < k; i++ {
				data = append(data, float64(math.Float32frombits(order.Uint32(b[4*i:]))))
			}
		}
	}

	if h.fortran {
		// Column-major: element (i, j) is at j*rows + i.
		t := make([]float64, total)
		for j := 0; j < cols; j++ {
			col := data[j*rows : (j+1)*rows]
			for i, v := range col {
				t[i*cols+j] = v
			}
		}
		data = t
	}
	for k, v := range data {
		if math.IsNaN(v) || math.IsInf(v, 0) {
			return nil, newReadError(name, gdiv.ErrNonFinite, "non-finite value %v at row %d, column %d (0-based; NaN and Inf are not allowed)", v, k/cols, k%cols)
		}
	}
	return &Matrix{Rows: rows, Cols: cols, Data: data}, nil
}

func npyShapeString(shape []int) string {
	parts := make([]string, len(shape))
	for i, s := range shape {
		parts[i] = strconv.Itoa(s)
	}
	if len(shape) == 1 {
		return "(" + parts[0] + ",)"
	}
	return "(" + strings.Join(parts, ", ") + ")"
}

type npyHeader struct {
	descr   string
	fortran bool
	shape   []int
}

// parseNPYHeader parses the Python dict literal of a .npy header, e.g.
// {'descr': '<f8', 'fortran_order': False, 'shape': (3, 4), }.
func parseNPYHeader(s string) (npyHeader, error) {
	p := &pyParser{s: s}
	v, err := p.value(0)
	if err != nil {
		return npyHeader{}, err
	}
	p.skipSpace()
	if p.i != len(p.s) {
		return npyHeader{}, fmt.Errorf("unexpected text after the dictionary at byte %d", p.i)
	}
	d, ok := v.(map[string]any)
	if !ok {
		return npyHeader{}, errors.New("not a dictionary")
	}
	var h npyHeader
	descr, ok := d["descr"]
	if !ok {
		return h, errors.New("no 'descr' key")
	}
	switch x := descr.(type) {
	case string:
		h.descr = x
	default:
		return h, errors.New("'descr' is a structured dtype: need a plain float dtype")
	}
	fo, ok := d["fortran_order"]
	if !ok {
		return h, errors.New("no 'fortran_order' key")
	}
	if h.fortran, ok = fo.(bool); !ok {
		return h, errors.New("'fortran_order' is not True or False")
	}
	sh, ok := d["shape"]
	if !ok {
		return h, errors.New("no 'shape' key")
	}
	t, ok := sh.([]any)
	if !ok {
		return h, errors.New("'shape' is not a tuple")
	}
	for _, e := range t {
		n, ok := e.(int)
		if !ok || n < 0 {
			return h, errors.New("'shape' holds something other than non-negative integers")
		}
		h.shape = append(h.shape, n)
	}
	return h, nil
}

// pyParser reads the subset of Python literals .npy headers use: dicts,
// tuples, lists, strings, integers, True, False and None.
type pyParser struct {
	s string
	i int
}

const maxPyDepth = 16

func (p *pyParser) skipSpace() {
	for p.i < len(p.s) && strings.IndexByte(" \t\r\n", p.s[p.i]) >= 0 {
		p.i++
	}
}

func (p *pyParser) value(depth int) (any, error) {
	if depth > maxPyDepth {
		return nil, errors.New("nested too deeply")
	}
	p.skipSpace()
	if p.i >= len(p.s) {
		return nil, errors.New("unexpected end")
	}
	switch c := p.s[p.i]; {
	case c == '{':
		p.i++
		d := map[string]any{}
		for {
			p.skipSpace()
			if p.i < len(p.s) && p.s[p.i] == '}' {
				p.i++
				return d, nil
			}
			k, err := p.value(depth + 1)
			if err != nil {
				return nil, err
			}
			ks, ok := k.(string)
			if !ok {
				return nil, errors.New("dictionary key is not a string")
			}
			p.skipSpace()
			if p.i >= len(p.s) || p.s[p.i] != ':' {
				return nil, fmt.Errorf("missing ':' after key %q", ks)
			}
			p.i++
			v, err := p.value(depth + 1)
			if err != nil {
				return nil, err
			}
			d[ks] = v
			if err := p.sep('}'); err != nil {
				return nil, err
			}
		}
	case c == '(' || c == '[':
		end := byte(')')
		if c == '[' {
			end = ']'
		}
		p.i++
		var t []any
		for {
			p.skipSpace()
			if p.i < len(p.s) && p.s[p.i] == end {
				p.i++
				if t == nil {
					t = []any{}
				}
				return t, nil
			}
			v, err := p.value(depth + 1)
			if err != nil {
				return nil, err
			}
			t = append(t, v)
			if err := p.sep(end); err != nil {
				return nil, err
			}
		}
	case c == '\'' || c == '"':
		j := strings.IndexByte(p.s[p.i+1:], c)
		if j < 0 {
			return nil, errors.New("unterminated string")
		}
		v := p.s[p.i+1 : p.i+1+j]
		p.i += j + 2
		return v, nil
	case c == '-' || c == '+' || ('0' <= c && c <= '9'):
		j := p.i + 1
		for j < len(p.s) && ('0' <= p.s[j] && p.s[j] <= '9' || p.s[j] == 'L') {
			j++
		}
		lit := strings.TrimSuffix(p.s[p.i:j], "L") // Python 2 long literals
		n, err := strconv.Atoi(lit)
		if err != nil {
			return nil, fmt.Errorf("bad integer %q", clipText(lit))
		}
		p.i = j
		return n, nil
	default:
		for _, w := range []struct {
			lit string
			v   any
		}{{"True", true}, {"False", false}, {"None", nil}} {
			if strings.HasPrefix(p.s[p.i:], w.lit) {
				p.i += len(w.lit)
				return w.v, nil
			}
		}
		return nil, fmt.Errorf("unexpected %q at byte %d", clipText(p.s[p.i:]), p.i)
	}
}

// sep consumes a ',' or peeks the closing byte end.
func (p *pyParser) sep(end byte) error {
	p.skipSpace()
	if p.i >= len(p.s) {
		return errors.New("unexpected end")
	}
	switch p.s[p.i] {
	case ',':
		p.i++
		return nil
	case end:
		return nil
	}
	return fmt.Errorf("expected ',' or %q at byte %d", end, p.i)
}
