package data

import (
	"bufio"
	"bytes"
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"

	"github.com/gdiv/gdiv/gdiv"
)

// ReadCSV reads a matrix from comma-separated text, one example per line.
// name is used in error messages (a file name, or "<stdin>").
//
// The format:
//   - Cells are numbers as strconv.ParseFloat reads them ("1", "-2.5e-3");
//     spaces around a cell are ignored; RFC 4180 quoting is understood.
//   - Line 1 is a header of column names when any of its cells is not a
//     number (so a header whose names are all numeric is read as data).
//   - Blank lines are skipped; CRLF line ends and a UTF-8 byte-order mark
//     are accepted.
//   - Every row has as many cells as the first one.
//
// Errors are *ReadError values naming the 1-based line and column and the
// offending text: ErrFormat for a cell that is not a number, an empty cell, a
// ragged row or binary data (a NUL byte in the first 512 bytes); ErrNonFinite for "nan", "inf" and numbers beyond the float64
// range; ErrEmpty when there is no data row.
func ReadCSV(r io.Reader, name string) (*Matrix, error) {
	return readDelimited(r, name, ',', 0)
}

// readDelimited reads sep-separated text; maxBytes > 0 also bounds the
// parsed values (8 bytes each: up to 4 times the text), with ErrTooLarge.
func readDelimited(r io.Reader, name string, sep rune, maxBytes int64) (*Matrix, error) {
	br := bufio.NewReaderSize(r, 1<<16)
	if b, err := br.Peek(3); err == nil && string(b) == "\ufeff" {
		br.Discard(3)
	}
	// Text has no NUL bytes: binary input (/dev/zero, an unknown binary
	// format) is refused at once rather than read as one endless line.
	if b, _ := br.Peek(512); bytes.IndexByte(b, 0) >= 0 {
		return nil, newReadError(name, ErrFormat, "binary data (a NUL byte at offset %d), not %s text", bytes.IndexByte(b, 0), map[rune]string{',': "CSV", '\t': "TSV"}[sep])
	}
	cr := csv.NewReader(br)
	cr.Comma = sep
	cr.FieldsPerRecord = -1 // ragged rows are reported below, with both counts
	cr.TrimLeadingSpace = true
	cr.ReuseRecord = true

	m := &Matrix{}
	first := true
	firstLine := 0 // line that fixed the column count
	for {
		rec, err := cr.Read()
		if err == io.EOF {
			break
		}
		if err != nil {
			var pe *csv.ParseError
			if errors.As(err, &pe) {
				return nil, &ReadError{Name: name, Line: pe.Line, Column: pe.Column, Err: ErrFormat,
					Msg: fmt.Sprintf("line %d, byte %d: %v", pe.Line, pe.Column, pe.Err)}
			}
			return nil, newReadError(name, ErrFormat, "%v", err)
		}
		line, _ := cr.FieldPos(0)
		if len(rec) == 1 && strings.TrimSpace(rec[0]) == "" {
			continue // a line of spaces: blank
		}
		if first {
			first = false
			firstLine = line
			m.Cols = len(rec)
			if csvIsHeader(rec) {
				m.Names = make([]string, len(rec))
				for j, c := range rec {
					m.Names[j] = strings.TrimSpace(c)
				}
				continue
			}
		}
		if len(rec) != m.Cols {
			what := "line"
			if m.Names != nil && m.Rows == 0 {
				what = "header line"
			}
			return nil, &ReadError{Name: name, Line: line, Err: ErrFormat,
				Msg: fmt.Sprintf("line %d has %d %s, expected %d (as on %s %d)", line, len(rec), csvPlural(len(rec), "column"), m.Cols, what, firstLine)}
		}
		for j, c := range rec {
			v, msg, sentinel := csvParseCell(c)
			if sentinel != nil {
				return nil, &ReadError{Name: name, Line: line, Column: j + 1, Err: sentinel,
					Msg: fmt.Sprintf("line %d, column %d: %s", line, j+1, msg)}
			}
			m.Data = append(m.Data, v)
		}
		if maxBytes > 0 && int64(len(m.Data))*8 > maxBytes {
			return nil, newReadError(name, ErrTooLarge, "line %d: the parsed values pass the limit of %d bytes (8 bytes per number); raise the limit to read it", line, maxBytes)
		}
		m.Rows++
	}
	if m.Rows == 0 {
		if m.Names != nil {
			return nil, newReadError(name, gdiv.ErrEmpty, "no data rows: only a header line")
		}
		return nil, newReadError(name, gdiv.ErrEmpty, "no data rows: the file is empty")
	}
	if m.Cols == 0 { // cannot happen with encoding/csv, kept as a guard
		return nil, newReadError(name, gdiv.ErrZeroDim, "rows have no columns")
	}
	return m, nil
}

func csvPlural(n int, word string) string {
	if n == 1 {
		return word
	}
	return word + "s"
}

// csvIsHeader reports whether any cell of rec fails to parse as a number.
func csvIsHeader(rec []string) bool {
	for _, c := range rec {
		if _, err := strconv.ParseFloat(strings.TrimSpace(c), 64); err != nil {
			var ne *strconv.NumError
			if errors.As(err, &ne) && ne.Err == strconv.ErrRange {
				continue // a number, just out of range: data (rejected later)
			}
			return true
		}
	}
	return false
}

// csvParseCell parses one cell as a finite float64. On failure it returns a
// message naming the text and the sentinel (ErrFormat or ErrNonFinite).
func csvParseCell(c string) (float64, string, error) {
	s := strings.TrimSpace(c)
	if s == "" {
		return 0, "empty cell", ErrFormat
	}
	v, err := strconv.ParseFloat(s, 64)
	if err != nil {
		var ne *strconv.NumError
		if errors.As(err, &ne) && ne.Err == strconv.ErrRange {
			if math.IsInf(v, 0) {
				return 0, fmt.Sprintf("non-finite value: %q is beyond the float64 range", clipText(s)), gdiv.ErrNonFinite
			}
			return v, "", nil // underflow: the nearest float64 (0 or subnormal) is fine
		}
		return 0, fmt.Sprintf("not a number: %q", clipText(s)), ErrFormat
	}
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return 0, fmt.Sprintf("non-finite value %q (NaN and Inf are not allowed)", clipText(s)), gdiv.ErrNonFinite
	}
	return v, "", nil
}

// clipText shortens s for an error message.
func clipText(s string) string {
	const max = 40
	if len(s) <= max {
		return s
	}
	return s[:max] + "..."
}
