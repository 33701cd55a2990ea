// Command benchtable reads `go test -bench` output on stdin and prints each
// benchmark family as a table: one row per parameter set, one column per
// variant, so that alternatives measured in the same run sit side by side.
//
// A benchmark named BenchmarkFamily/param=value/.../variant is placed in
// table "Family", row "param=value/...", column "variant". The value shown
// is the throughput when the benchmark reports one (MB/s, shown as GB/s, or
// a custom unit such as coords/s), else ns/op. When a family has both a
// "plain" and a "gdiv" column, a ratio column gdiv/plain is added.
//
// The raw lines are echoed to stderr so nothing is lost.
package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

type cell struct {
	value float64
	unit  string
}

type table struct {
	name string
	rows []string
	cols []string
	vals map[[2]string]cell
}

var lineRE = regexp.MustCompile(`^Benchmark([^\s/]+)(/\S*)?\s+\d+\s+(.*)$`)

func main() {
	tables, order, err := parse(io.TeeReader(os.Stdin, os.Stderr))
	if err != nil {
		fmt.Fprintln(os.Stderr, "benchtable:", err)
		os.Exit(1)
	}
	if len(order) == 0 {
		fmt.Fprintln(os.Stderr, "benchtable: no benchmark lines on stdin")
		os.Exit(1)
	}
	for _, name := range order {
		render(os.Stdout, tables[name])
	}
}

func parse(r io.Reader) (map[string]*table, []string, error) {
	tables := map[string]*table{}
	var order []string
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		m := lineRE.FindStringSubmatch(sc.Text())
		if m == nil {
			continue
		}
		family := m[1]
		if i := strings.LastIndex(family, "-"); i > 0 { // GOMAXPROCS suffix without sub-benchmarks
			if _, err := strconv.Atoi(family[i+1:]); err == nil {
				family = family[:i]
			}
		}
		path := strings.TrimPrefix(m[2], "/")
		if i := strings.LastIndex(path, "-"); i > 0 {
			if _, err := strconv.Atoi(path[i+1:]); err == nil {
				path = path[:i]
			}
		}
		// Family/row.../variant; a single level (Family/x) is a row of its own.
		row, col := path, "result"
		if i := strings.LastIndex(path, "/"); i >= 0 {
			row, col = path[:i], path[i+1:]
		}
		c, ok := pick(strings.Fields(m[3]))
		if !ok {
			continue
		}
		t := tables[family]
		if t == nil {
			t = &table{name: family, vals: map[[2]string]cell{}}
			tables[family] = t
			order = append(order, family)
		}
		if !slices.Contains(t.rows, row) {
			t.rows = append(t.rows, row)
		}
		if !slices.Contains(t.cols, col) {
			t.cols = append(t.cols, col)
		}
		t.vals[[2]string{row, col}] = c
	}
	return tables, order, sc.Err()
}

// pick chooses the throughput metric of a result line: a custom x/s unit,
// then MB/s (as GB/s), else ns/op.
func pick(fields []string) (cell, bool) {
	var ns, mbs, custom *cell
	for i := 0; i+1 < len(fields); i += 2 {
		v, err := strconv.ParseFloat(fields[i], 64)
		if err != nil {
			continue
		}
		switch u := fields[i+1]; {
		case u == "ns/op":
			ns = &cell{v, "ns/op"}
		case u == "MB/s":
			mbs = &cell{v / 1000, "GB/s"}
		case strings.HasSuffix(u, "/s"):
			custom = &cell{v, u}
		}
	}
	for _, c := range []*cell{custom, mbs, ns} {
		if c != nil {
			return *c, true
		}
	}
	return cell{}, false
}

func render(w io.Writer, t *table) {
	unit := ""
	for _, c := range t.vals {
		unit = c.unit
		break
	}
	cols := slices.Clone(t.cols)
	ratio := slices.Contains(cols, "plain") && slices.Contains(cols, "gdiv")
	header := append([]string{"params"}, cols...)
	if ratio {
		header = append(header, "gdiv/plain")
	}
	fmt.Fprintf(w, "\n### %s (%s)\n\n| %s |\n|%s\n", t.name, unit, strings.Join(header, " | "), strings.Repeat("---|", len(header)))
	for _, row := range t.rows {
		line := []string{orDash(row)}
		for _, col := range cols {
			c, ok := t.vals[[2]string{row, col}]
			if !ok {
				line = append(line, "–")
				continue
			}
			line = append(line, format(c.value))
		}
		if ratio {
			p, okp := t.vals[[2]string{row, "plain"}]
			g, okg := t.vals[[2]string{row, "gdiv"}]
			if okp && okg && p.value > 0 {
				r := g.value / p.value
				if p.unit == "ns/op" {
					r = p.value / g.value
				}
				line = append(line, fmt.Sprintf("%.2f×", r))
			} else {
				line = append(line, "–")
			}
		}
		fmt.Fprintf(w, "| %s |\n", strings.Join(line, " | "))
	}
}

func orDash(s string) string {
	if s == "" {
		return "–"
	}
	return s
}

func format(v float64) string {
	switch {
	case v >= 1e9:
		return fmt.Sprintf("%.2fG", v/1e9)
	case v >= 1e6:
		return fmt.Sprintf("%.2fM", v/1e6)
	case v >= 1e4:
		return fmt.Sprintf("%.0f", v)
	default:
		return fmt.Sprintf("%.2f", v)
	}
}
