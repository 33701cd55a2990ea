package main

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

const tol = 1e-12

// gdivRun runs the CLI with the given stdin and returns its exit status,
// stdout and stderr.
func gdivRun(t *testing.T, stdin string, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := run(args, strings.NewReader(stdin), &out, &errb)
	return code, out.String(), errb.String()
}

// writeFile writes content to name in a fresh temporary directory.
func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// jsonResult parses the one-object JSON output, checks that its keys are
// exactly want, in order, and returns the values.
func jsonResult(t *testing.T, out string, want []string) map[string]any {
	t.Helper()
	dec := json.NewDecoder(strings.NewReader(out))
	var keys []string
	vals := map[string]any{}
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		t.Fatalf("output does not start a JSON object: %q", out)
	}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			t.Fatalf("bad JSON %q: %v", out, err)
		}
		k := tok.(string)
		var v any
		if err := dec.Decode(&v); err != nil {
			t.Fatalf("bad JSON value for %q in %q: %v", k, out, err)
		}
		keys = append(keys, k)
		vals[k] = v
	}
	if tok, err := dec.Token(); err != nil || tok != json.Delim('}') {
		t.Fatalf("output does not end the JSON object: %q", out)
	}
	if _, err := dec.Token(); err == nil {
		t.Fatalf("more than one JSON value in %q", out)
	}
	if !slices.Equal(keys, want) {
		t.Fatalf("keys %q, want %q", keys, want)
	}
	return vals
}

// tableResult parses "key  value" lines, checking the keys and alignment.
func tableResult(t *testing.T, out string, want []string) map[string]string {
	t.Helper()
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	var keys []string
	vals := map[string]string{}
	col := -1
	for _, l := range lines {
		f := strings.Fields(l)
		if len(f) != 2 {
			t.Fatalf("table line %q is not \"key  value\"", l)
		}
		keys = append(keys, f[0])
		vals[f[0]] = f[1]
		c := strings.LastIndex(l, f[1])
		if col >= 0 && c != col {
			t.Errorf("values not aligned in\n%s", out)
		}
		col = c
	}
	if !slices.Equal(keys, want) {
		t.Fatalf("keys %q, want %q", keys, want)
	}
	return vals
}

// want is an expected value: a float (compared within tol), an int, a
// string, or inf.
type want = any

var inf = math.Inf(1)

func checkValues(t *testing.T, json map[string]any, table map[string]string, exp map[string]want) {
	t.Helper()
	for k, w := range exp {
		jv, tv := json[k], table[k]
		switch w := w.(type) {
		case string:
			if jv != w || tv != w {
				t.Errorf("%s: json %v, table %v, want %q", k, jv, tv, w)
			}
		case int:
			if f, ok := jv.(float64); !ok || f != float64(w) || tv != strconv.Itoa(w) {
				t.Errorf("%s: json %v, table %v, want %d", k, jv, tv, w)
			}
		case float64:
			if math.IsInf(w, 1) {
				if jv != "inf" || tv != "inf" {
					t.Errorf("%s: json %v, table %v, want \"inf\"", k, jv, tv)
				}
				continue
			}
			f, ok := jv.(float64)
			tf, err := strconv.ParseFloat(tv, 64)
			if !ok || err != nil || math.Abs(f-w) > tol*math.Max(1, math.Abs(w)) || tf != f {
				t.Errorf("%s: json %v, table %v, want %v", k, jv, tv, w)
			}
		}
	}
}

var (
	statsKeyList = []string{"n", "dim", "sum_sq_norms", "sq_norm_of_sum", "m2", "g", "diversity", "batch_bound", "noise_scale"}
	dimKeys      = []string{"mechanism", "diversity", "batch_bound", "base_diversity", "base_batch_bound"}
	dimMCKeys    = append(slices.Clone(dimKeys), "mc_diversity", "mc_stderr")
	glmKeys      = []string{"n", "dim", "min_sq_norm", "sigma_max_sq", "batch_bound_lower"}
	sparseKeys   = []string{"n", "max_degree", "batch_bound_lower"}
)

// runBoth runs args with --format json and --format table (flags appended
// after the positionals, which must work) and checks both outputs.
func runBoth(t *testing.T, stdin string, keys []string, exp map[string]want, args ...string) {
	t.Helper()
	code, out, errs := gdivRun(t, stdin, append(slices.Clone(args), "--format", "json")...)
	if code != 0 || errs != "" {
		t.Fatalf("json: exit %d, stderr %q", code, errs)
	}
	js := jsonResult(t, out, keys)
	// Table is the default format.
	code, out, errs = gdivRun(t, stdin, args...)
	if code != 0 || errs != "" {
		t.Fatalf("table: exit %d, stderr %q", code, errs)
	}
	tb := tableResult(t, out, keys)
	checkValues(t, js, tb, exp)
}

func TestStats(t *testing.T) {
	for _, tc := range []struct {
		name string
		csv  string
		exp  map[string]want
	}{
		{"orthogonal", "1,0\n0,1\n", map[string]want{
			"n": 2, "dim": 2, "sum_sq_norms": 2.0, "sq_norm_of_sum": 2.0, "m2": 1.0, "g": 0.5,
			"diversity": 1.0, "batch_bound": 2.0, "noise_scale": 1.0}},
		{"identical", "1,0\n1,0\n", map[string]want{
			"n": 2, "dim": 2, "sum_sq_norms": 2.0, "sq_norm_of_sum": 4.0, "m2": 1.0, "g": 1.0,
			"diversity": 0.5, "batch_bound": 1.0, "noise_scale": 0.0}},
		{"cancelling", "1,0\n-1,0\n", map[string]want{
			"n": 2, "sum_sq_norms": 2.0, "sq_norm_of_sum": 0.0, "g": 0.0,
			"diversity": inf, "batch_bound": inf, "noise_scale": inf}},
		// Σ‖g‖² = 5+25+1 = 31, Σg = (3,6), ‖Σg‖² = 45.
		{"three rows with header", "x,y\n1,2\n3,4\n-1,0\n", map[string]want{
			"n": 3, "dim": 2, "sum_sq_norms": 31.0, "sq_norm_of_sum": 45.0, "m2": 31.0 / 3, "g": 5.0,
			"diversity": 31.0 / 45, "batch_bound": 31.0 / 15, "noise_scale": 16.0 / 15}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := writeFile(t, "g.csv", tc.csv)
			runBoth(t, "", statsKeyList, tc.exp, "stats", p)
		})
		t.Run(tc.name+"/stdin", func(t *testing.T) {
			runBoth(t, tc.csv, statsKeyList, tc.exp, "stats", "-")
		})
	}
}

func TestStatsCols(t *testing.T) {
	// The digits.csv layout: features, then a label column.
	p := writeFile(t, "d.csv", "a,b,label\n1,0,5\n0,1,7\n")
	exp := map[string]want{"n": 2, "dim": 2, "diversity": 1.0, "batch_bound": 2.0}
	for _, spec := range []string{"0:2", ":-1", "a,b", "0,1", "b,a"} {
		runBoth(t, "", statsKeyList, exp, "stats", "--cols", spec, p)
	}
	// Without --cols the label column counts as a coordinate.
	code, out, _ := gdivRun(t, "", "stats", "--format", "json", p)
	if v := jsonResult(t, out, statsKeyList); code != 0 || v["dim"] != 3.0 {
		t.Errorf("without --cols: exit %d, dim %v", code, v["dim"])
	}
}

func TestFlagPlacement(t *testing.T) {
	p := writeFile(t, "g.csv", "1,0\n0,1\n")
	for _, args := range [][]string{
		{"stats", "--format", "json", p},
		{"stats", p, "--format", "json"},
		{"stats", "--format=json", p},
		{"stats", "-format", "json", p},
		{"stats", "--format", "json", "--", p},
		{"dim", p, "--mechanism", "dropout", "--format", "json", "--p", "0.5"},
		{"bound", "--format", "json", "glm", p},
		{"bound", "glm", p, "--format", "json"},
	} {
		code, out, errs := gdivRun(t, "", args...)
		if code != 0 || errs != "" || !strings.HasPrefix(out, "{") {
			t.Errorf("%q: exit %d, stdout %q, stderr %q", args, code, out, errs)
		}
	}
}

func TestDiff(t *testing.T) {
	// Row-wise differences are (1,0) and (0,1).
	w := writeFile(t, "w.csv", "2,1\n1,1\n")
	w2 := writeFile(t, "w2.csv", "1,1\n1,0\n")
	exp := map[string]want{
		"n": 2, "dim": 2, "sum_sq_norms": 2.0, "sq_norm_of_sum": 2.0, "m2": 1.0, "g": 0.5,
		"diversity": 1.0, "batch_bound": 2.0, "noise_scale": 1.0}
	runBoth(t, "", statsKeyList, exp, "diff", w, w2)
	runBoth(t, "1,1\n1,0\n", statsKeyList, exp, "diff", w, "-")
	// Differences (1,0) and (-1,0) cancel.
	w3 := writeFile(t, "w3.csv", "1,1\n2,1\n")
	runBoth(t, "", statsKeyList, map[string]want{"diversity": inf, "batch_bound": inf}, "diff", w, w3)
}

func TestDim(t *testing.T) {
	ortho := writeFile(t, "o.csv", "1,0\n0,1\n")
	same := writeFile(t, "s.csv", "1,0\n1,0\n")
	ones := writeFile(t, "ones.csv", "1,1\n1,1\n")
	sq2 := math.Sqrt2
	for _, tc := range []struct {
		name string
		args []string
		exp  map[string]want
	}{
		// Dropout p on orthogonal unit rows: Σ E‖g^D‖² = 2(1-p), E‖Σ‖² the same.
		{"dropout orthogonal", []string{"--mechanism", "dropout", "--p", "0.5", ortho}, map[string]want{
			"mechanism": "dropout", "diversity": 1.0, "batch_bound": 2.0, "base_diversity": 1.0, "base_batch_bound": 2.0}},
		// Identical rows, p = 1/2: num = 1, den = 2(1/2 - 1/4) + (1/4)·4 = 3/2.
		{"dropout identical", []string{"--mechanism", "dropout", "--p", "0.5", same}, map[string]want{
			"mechanism": "dropout", "diversity": 2.0 / 3, "batch_bound": 4.0 / 3, "base_diversity": 0.5, "base_batch_bound": 1.0}},
		// Rescaled: num = 2/(1-p) = 4, den = 2(2-1) + 4 = 6.
		{"dropout rescale", []string{"--mechanism", "dropout", "--p", "0.5", "--rescale", same}, map[string]want{
			"diversity": 2.0 / 3, "batch_bound": 4.0 / 3}},
		// Eq. 23: B = (nΣ‖g‖² + n²dσ²)/(‖Σg‖² + ndσ²) = (4 + 8)/(4 + 4).
		{"langevin", []string{"--mechanism", "langevin", "--std", "1", same}, map[string]want{
			"mechanism": "langevin", "diversity": 0.75, "batch_bound": 1.5, "base_diversity": 0.5, "base_batch_bound": 1.0}},
		// Eq. 24 (s = 1): E‖Q(v)‖² = ‖v‖₂‖v‖₁ = 2√2 per row of (1,1).
		{"quantize", []string{"--mechanism", "quantize", ones}, map[string]want{
			"mechanism": "quantize", "diversity": sq2 / (sq2 + 1), "batch_bound": 2 * sq2 / (sq2 + 1), "base_diversity": 0.5, "base_batch_bound": 1.0}},
		{"quantize levels 1", []string{"--mechanism", "quantize", "--levels", "1", ones}, map[string]want{
			"diversity": sq2 / (sq2 + 1)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			runBoth(t, "", dimKeys, tc.exp, append([]string{"dim"}, tc.args...)...)
		})
	}
}

func TestDimMonteCarlo(t *testing.T) {
	same := writeFile(t, "s.csv", "1,0\n1,0\n")
	args := []string{"dim", "--mechanism", "langevin", "--std", "1", "--samples", "400", "--seed", "7", "--format", "json", same}
	code, out, errs := gdivRun(t, "", args...)
	if code != 0 || errs != "" {
		t.Fatalf("exit %d, stderr %q", code, errs)
	}
	v := jsonResult(t, out, dimMCKeys)
	mc, se := v["mc_diversity"].(float64), v["mc_stderr"].(float64)
	if !(se > 0) || math.Abs(mc-0.75) > 5*se {
		t.Errorf("mc_diversity %v ± %v, want 0.75 within 5 standard errors", mc, se)
	}
	// The same seed gives the same output; the default seed works too.
	if _, again, _ := gdivRun(t, "", args...); again != out {
		t.Errorf("same seed, different output:\n%s\n%s", out, again)
	}
	code, out, _ = gdivRun(t, "", "dim", "--mechanism", "dropout", "--p", "0.25", "--samples", "50", same)
	if code != 0 {
		t.Fatalf("default seed: exit %d", code)
	}
	tableResult(t, out, dimMCKeys)
}

func TestBound(t *testing.T) {
	ortho := writeFile(t, "o.csv", "1,0\n0,1\n")
	same := writeFile(t, "s.csv", "1,0\n1,0\n")
	runBoth(t, "", glmKeys, map[string]want{"n": 2, "dim": 2, "min_sq_norm": 1.0, "sigma_max_sq": 1.0, "batch_bound_lower": 2.0},
		"bound", "glm", ortho)
	// XᵀX = diag(2, 0): σ²_max = 2, bound 2·1/2.
	runBoth(t, "", glmKeys, map[string]want{"n": 2, "dim": 2, "min_sq_norm": 1.0, "sigma_max_sq": 2.0, "batch_bound_lower": 1.0},
		"bound", "glm", same)
	// Supports {0}, {1}, {0,1}: the third row conflicts with both others.
	tri := writeFile(t, "t.csv", "1,0\n0,1\n1,1\n")
	runBoth(t, "", sparseKeys, map[string]want{"n": 3, "max_degree": 2, "batch_bound_lower": 1.0}, "bound", "sparse", tri)
	runBoth(t, "", sparseKeys, map[string]want{"n": 2, "max_degree": 0, "batch_bound_lower": 2.0}, "bound", "sparse", ortho)
	runBoth(t, "1,0\n1,0\n", sparseKeys, map[string]want{"n": 2, "max_degree": 1, "batch_bound_lower": 1.0}, "bound", "sparse", "-")
}

// npyBytes is a hand-written little-endian float64 .npy file.
func npyBytes(rows, cols int, vals ...float64) []byte {
	h := fmt.Sprintf("{'descr': '<f8', 'fortran_order': False, 'shape': (%d, %d), }", rows, cols)
	for (10+len(h)+1)%64 != 0 {
		h += " "
	}
	h += "\n"
	var b bytes.Buffer
	b.WriteString("\x93NUMPY\x01\x00")
	binary.Write(&b, binary.LittleEndian, uint16(len(h)))
	b.WriteString(h)
	binary.Write(&b, binary.LittleEndian, vals)
	return b.Bytes()
}

func TestNPYInput(t *testing.T) {
	p := writeFile(t, "g.npy", string(npyBytes(2, 2, 1, 0, 1, 0)))
	runBoth(t, "", statsKeyList, map[string]want{"n": 2, "dim": 2, "diversity": 0.5, "batch_bound": 1.0}, "stats", p)
}

func TestHelp(t *testing.T) {
	for _, args := range [][]string{
		{"--help"}, {"-h"}, {"help"},
		{"stats", "--help"}, {"stats", "-h"}, {"diff", "--help"}, {"dim", "--help"}, {"bound", "--help"},
		{"bound", "glm", "--help"}, {"help", "stats"}, {"help", "dim"}, {"version", "--help"}, {"help", "--help"},
		{"stats", "file.csv", "--help"},
	} {
		code, out, errs := gdivRun(t, "", args...)
		if code != 0 || errs != "" || !strings.Contains(out, "Usage:") {
			t.Errorf("%q: exit %d, stderr %q, stdout %.60q", args, code, errs, out)
		}
	}
	_, out, _ := gdivRun(t, "", "--help")
	for _, c := range []string{"stats", "diff", "dim", "bound", `"inf"`, "--cols", "--format"} {
		if !strings.Contains(out, c) {
			t.Errorf("gdiv --help does not mention %s", c)
		}
	}
	for _, c := range []string{"stats", "diff", "dim", "bound"} {
		_, out, _ := gdivRun(t, "", c, "--help")
		if !strings.Contains(out, `"inf"`) || !strings.Contains(out, "--cols") || !strings.Contains(out, "gdiv "+c) {
			t.Errorf("gdiv %s --help lacks the inf convention, --cols or its usage line", c)
		}
	}
	code, out, errs := gdivRun(t, "", "version")
	if code != 0 || errs != "" || !strings.HasPrefix(out, "gdiv ") {
		t.Errorf("version: exit %d, stdout %q, stderr %q", code, out, errs)
	}
}

func TestErrors(t *testing.T) {
	dir := t.TempDir()
	file := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good := file("good.csv", "1,0\n0,1\n")
	empty := file("empty.csv", "")
	ragged := file("ragged.csv", "1,2,3\n4,5,6\n7,8\n")
	nan := file("nan.csv", "1,2\n3,NaN\n")
	text := file("text.csv", "a,b\n1,2\n3,x\n")
	zero := file("zero.csv", "0,0\n0,0\n")
	wide := file("wide.csv", "1,2,3\n4,5,6\n")
	badNPY := file("bad.npy", string(npyBytes(2, 2, 1, 2, 3)))
	missing := filepath.Join(dir, "missing.csv")

	for _, tc := range []struct {
		name  string
		stdin string
		args  []string
		code  int
		want  []string // substrings of the stderr line
	}{
		{"no command", "", nil, 2, []string{"missing command"}},
		{"unknown command", "", []string{"frobnicate", good}, 2, []string{"gdiv: frobnicate: unknown command"}},
		{"flag before command", "", []string{"--format", "json", "stats"}, 2, []string{"--format"}},
		{"missing file", "", []string{"stats", missing}, 1, []string{"gdiv: stats: ", "missing.csv", "no such file"}},
		{"empty file", "", []string{"stats", empty}, 1, []string{"empty.csv", "empty"}},
		{"empty stdin", "", []string{"stats", "-"}, 1, []string{"<stdin>", "empty"}},
		{"ragged row", "", []string{"stats", ragged}, 1, []string{"ragged.csv", "line 3 has 2 columns, expected 3"}},
		{"nan", "", []string{"stats", nan}, 1, []string{"nan.csv", "line 2, column 2", `"NaN"`}},
		{"non-numeric", "", []string{"stats", text}, 1, []string{"text.csv", "line 3, column 2", `"x"`}},
		{"nan on stdin", "1,inf\n", []string{"stats", "-"}, 1, []string{"<stdin>", "line 1, column 2"}},
		{"all zero", "", []string{"stats", zero}, 1, []string{"zero.csv", "all gradients are zero"}},
		{"truncated npy", "", []string{"stats", badNPY}, 1, []string{"bad.npy", "truncated"}},
		{"missing FILE", "", []string{"stats"}, 2, []string{"gdiv: stats: missing FILE"}},
		{"extra argument", "", []string{"stats", good, good}, 2, []string{"unexpected argument"}},
		{"bad format", "", []string{"stats", "--format", "xml", good}, 2, []string{`--format "xml"`}},
		{"unknown flag", "", []string{"stats", "--bogus", good}, 2, []string{"bogus"}},
		{"flag without value", "", []string{"stats", good, "--format"}, 2, []string{"format"}},
		{"bad cols", "", []string{"stats", "--cols", "0:1,z", good}, 2, []string{"--cols", `"z"`}},
		{"cols clipped", "", []string{"stats", "--cols", "0:99", good}, 2, []string{"--cols", "stop 99 is out of range", "2 columns"}},
		{"cols out of range", "", []string{"stats", "--cols", "7", good}, 2, []string{"--cols", "out of range"}},
		{"diff shapes", "", []string{"diff", good, wide}, 1, []string{"gdiv: diff: ", "good.csv is 2×2", "wide.csv is 2×3"}},
		{"diff identical", "", []string{"diff", good, good}, 1, []string{"identical"}},
		{"diff one file", "", []string{"diff", good}, 2, []string{"missing FILE_W2"}},
		{"diff both stdin", "1\n", []string{"diff", "-", "-"}, 2, []string{"only one"}},
		{"diff bad second", "", []string{"diff", good, ragged}, 1, []string{"ragged.csv", "line 3"}},
		{"dim no mechanism", "", []string{"dim", good}, 2, []string{"gdiv: dim: missing --mechanism"}},
		{"dim unknown mechanism", "", []string{"dim", "--mechanism", "shuffle", good}, 2, []string{`unknown mechanism "shuffle"`}},
		{"dim p = 1", "", []string{"dim", "--mechanism", "dropout", "--p", "1", good}, 2, []string{"--p 1", "0 <= p < 1"}},
		{"dim p < 0", "", []string{"dim", "--mechanism", "dropout", "--p", "-0.1", good}, 2, []string{"--p -0.1"}},
		{"dim p NaN", "", []string{"dim", "--mechanism", "dropout", "--p", "NaN", good}, 2, []string{"--p NaN"}},
		{"dim p missing", "", []string{"dim", "--mechanism", "dropout", good}, 2, []string{"needs --p"}},
		{"dim p not a number", "", []string{"dim", "--mechanism", "dropout", "--p", "half", good}, 2, []string{"half"}},
		{"dim std < 0", "", []string{"dim", "--mechanism", "langevin", "--std", "-1", good}, 2, []string{"--std -1"}},
		{"dim std inf", "", []string{"dim", "--mechanism", "langevin", "--std", "inf", good}, 2, []string{"--std +Inf"}},
		{"dim std missing", "", []string{"dim", "--mechanism", "langevin", good}, 2, []string{"needs --std"}},
		{"dim p with langevin", "", []string{"dim", "--mechanism", "langevin", "--std", "1", "--p", "0.5", good}, 2, []string{"--p does not apply to --mechanism langevin"}},
		{"dim std with dropout", "", []string{"dim", "--mechanism", "dropout", "--p", "0.5", "--std", "1", good}, 2, []string{"--std does not apply"}},
		{"dim rescale with quantize", "", []string{"dim", "--mechanism", "quantize", "--rescale", good}, 2, []string{"--rescale does not apply"}},
		{"dim levels 0", "", []string{"dim", "--mechanism", "quantize", "--levels", "0", good}, 2, []string{"--levels 0"}},
		{"dim samples 1", "", []string{"dim", "--mechanism", "quantize", "--samples", "1", good}, 2, []string{"--samples 1"}},
		{"dim seed alone", "", []string{"dim", "--mechanism", "quantize", "--seed", "3", good}, 2, []string{"--seed"}},
		{"dim missing FILE", "", []string{"dim", "--mechanism", "quantize"}, 2, []string{"missing FILE"}},
		{"dim bad data", "", []string{"dim", "--mechanism", "quantize", nan}, 1, []string{"nan.csv", "line 2, column 2"}},
		{"dim all zero", "", []string{"dim", "--mechanism", "langevin", "--std", "1", zero}, 1, []string{"zero.csv"}},
		{"bound no kind", "", []string{"bound"}, 2, []string{"gdiv: bound: missing kind"}},
		{"bound bad kind", "", []string{"bound", "dense", good}, 2, []string{`unknown kind "dense"`}},
		{"bound missing FILE", "", []string{"bound", "glm"}, 2, []string{"gdiv: bound glm: missing FILE"}},
		{"bound empty", "", []string{"bound", "sparse", empty}, 1, []string{"gdiv: bound sparse: ", "empty.csv"}},
		{"bound all zero", "", []string{"bound", "glm", zero}, 1, []string{"gdiv: bound glm: ", "zero.csv"}},
		{"help unknown", "", []string{"help", "nope"}, 2, []string{"unknown command"}},
		{"version extra", "", []string{"version", "x"}, 2, []string{"unexpected argument"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errs := gdivRun(t, tc.stdin, tc.args...)
			if code != tc.code {
				t.Errorf("exit %d, want %d (stderr %q)", code, tc.code, errs)
			}
			if out != "" {
				t.Errorf("stdout not empty: %q", out)
			}
			if !strings.HasPrefix(errs, "gdiv: ") || !strings.HasSuffix(errs, "\n") || strings.Count(errs, "\n") != 1 {
				t.Fatalf("stderr is not one line starting with \"gdiv: \": %q", errs)
			}
			for _, w := range tc.want {
				if !strings.Contains(errs, w) {
					t.Errorf("stderr %q does not contain %q", errs, w)
				}
			}
		})
	}
}

// TestDigits runs on the bundled dataset: 64 pixel columns and a label.
func TestDigits(t *testing.T) {
	p := filepath.Join("..", "..", "testdata", "digits.csv")
	if _, err := os.Stat(p); err != nil {
		t.Skipf("bundled dataset not present: %v", err)
	}
	code, out, errs := gdivRun(t, "", "stats", p, "--cols", "0:64", "--format", "json")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	v := jsonResult(t, out, statsKeyList)
	if v["dim"] != 64.0 || !(v["n"].(float64) > 0) || !(v["batch_bound"].(float64) >= 1) {
		t.Errorf("digits: %v", v)
	}
	code, out2, errs := gdivRun(t, "", "stats", p, "--cols", ":-1", "--format", "json")
	if code != 0 || out2 != out {
		t.Errorf("--cols :-1 differs from --cols 0:64: exit %d %s", code, errs)
	}
}

// TestSizeLimits: inputs and arrays beyond --max-bytes end in a one-line
// error and a non-zero status, never in Go's fatal "out of memory".
func TestSizeLimits(t *testing.T) {
	big := writeFile(t, "big.csv", strings.Repeat("1,2\n", 1000)) // 4000 bytes
	stream := strings.Repeat("1,2\n", 100_000)
	cases := []struct {
		name  string
		stdin string
		args  []string
		code  int
		want  []string
	}{
		{"file over the limit", "", []string{"stats", "--max-bytes", "1K", big}, 1, []string{"big.csv", "4000 bytes", "limit of 1024 bytes"}},
		{"stream over the limit", stream, []string{"stats", "--max-bytes", "64KiB", "-"}, 1, []string{"<stdin>", "limit of 65536 bytes"}},
		{"dim samples", "", []string{"dim", "--mechanism", "quantize", "--samples", "2000000000", big}, 2, []string{"--samples 2000000000", "29.8 GiB", "--max-bytes 4GiB"}},
		{"train hidden", "", []string{"train", "--data", "digits", "--problem", "mlp", "--hidden", "1000000000", "--lr", "0.1", "--batch", "8", "--steps", "1", "--quiet"},
			2, []string{"--problem mlp", "parameters", "raise --max-bytes"}},
		{"bad max-bytes", "", []string{"stats", "--max-bytes", "0", big}, 2, []string{"max-bytes", "want a size"}},
		{"bad max-bytes suffix", "", []string{"stats", "--max-bytes", "3X", big}, 2, []string{"max-bytes"}},
	}
	if _, err := os.Stat("/dev/zero"); err == nil {
		cases = append(cases, struct {
			name  string
			stdin string
			args  []string
			code  int
			want  []string
		}{"dev zero", "", []string{"stats", "/dev/zero"}, 1, []string{"/dev/zero", "binary data"}})
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errs := gdivRun(t, tc.stdin, tc.args...)
			if code != tc.code || out != "" {
				t.Errorf("exit %d, want %d; stdout %q; stderr %q", code, tc.code, out, errs)
			}
			if !strings.HasPrefix(errs, "gdiv: ") || strings.Count(errs, "\n") != 1 {
				t.Fatalf("stderr is not one line: %q", errs)
			}
			for _, w := range tc.want {
				if !strings.Contains(errs, w) {
					t.Errorf("stderr %q does not contain %q", errs, w)
				}
			}
		})
	}
	// Raising the limit lets the same input through (the parsed values count
	// too: 2000 numbers are 16000 bytes); the stream that fits is read whole.
	if code, _, errs := gdivRun(t, "", "stats", "--max-bytes", "16000", big); code != 0 {
		t.Errorf("file at the limit: exit %d: %s", code, errs)
	}
	if code, _, errs := gdivRun(t, "", "stats", "--max-bytes", "15999", big); code != 1 || !strings.Contains(errs, "parsed values") {
		t.Errorf("parsed values over the limit: exit %d: %s", code, errs)
	}
	if code, _, errs := gdivRun(t, stream, "stats", "--max-bytes", "2M", "-"); code != 0 {
		t.Errorf("stream under the limit: exit %d: %s", code, errs)
	}
}
