package data

import (
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/gdiv/gdiv/gdiv"
)

// Named tolerances of the data set tests.
const (
	dsTolMoment = 1e-12 // standardized column means and variances
)

func TestLoadBuiltinDigits(t *testing.T) {
	ds, err := LoadBuiltin("digits")
	if err != nil {
		t.Fatal(err)
	}
	if ds.N != 1797 || ds.D != 64 || ds.Classes != 10 || ds.Name != "digits" || len(ds.FeatureNames) != 64 {
		t.Fatalf("digits: %d×%d, %d classes, name %q, %d feature names", ds.N, ds.D, ds.Classes, ds.Name, len(ds.FeatureNames))
	}
	// Class counts of testdata/digits.csv.
	if got, want := ds.ClassCounts(), []int{178, 182, 177, 183, 181, 182, 181, 179, 174, 180}; !slices.Equal(got, want) {
		t.Errorf("class counts %v, want %v", got, want)
	}
	if ds.FeatureNames[0] != "pixel_0" || ds.FeatureNames[63] != "pixel_63" {
		t.Errorf("feature names %q … %q", ds.FeatureNames[0], ds.FeatureNames[63])
	}
	// First row of the file: 0,0,5,13,9,1,0,0,… label 0.
	if !slices.Equal(ds.Row(0)[:6], []float64{0, 0, 5, 13, 9, 1}) || ds.Y[0] != 0 || ds.Y[1] != 1 {
		t.Errorf("row 0 = %v…, labels %v %v", ds.Row(0)[:6], ds.Y[0], ds.Y[1])
	}
	for k, v := range ds.X {
		if v < 0 || v > 16 || v != math.Trunc(v) {
			t.Fatalf("pixel %d = %v, want an integer in [0, 16]", k, v)
		}
	}
	// A fresh copy each time.
	ds.X[0] = 99
	again, _ := LoadBuiltin("digits")
	if again.X[0] != 0 {
		t.Error("LoadBuiltin returned shared memory")
	}
}

func TestLoadBuiltinBreastCancer(t *testing.T) {
	ds, err := LoadBuiltin("breast_cancer")
	if err != nil {
		t.Fatal(err)
	}
	if ds.N != 569 || ds.D != 30 || ds.Classes != 2 {
		t.Fatalf("breast_cancer: %d×%d, %d classes", ds.N, ds.D, ds.Classes)
	}
	if got := ds.ClassCounts(); !slices.Equal(got, []int{212, 357}) {
		t.Errorf("class counts %v, want [212 357]", got)
	}
	if ds.X[0] != 17.99 || ds.FeatureNames[0] != "mean_radius" || ds.FeatureNames[29] != "worst_fractal_dimension" {
		t.Errorf("x_00 = %v, names %q … %q", ds.X[0], ds.FeatureNames[0], ds.FeatureNames[29])
	}
}

func TestLoadBuiltinUnknown(t *testing.T) {
	_, err := LoadBuiltin("mnist")
	if !errors.Is(err, gdiv.ErrParam) || !strings.Contains(err.Error(), `"mnist"`) ||
		!strings.Contains(err.Error(), "digits") || !strings.Contains(err.Error(), "breast_cancer") {
		t.Errorf("LoadBuiltin(mnist): %v", err)
	}
	if got := BuiltinNames(); !slices.Equal(got, []string{"breast_cancer", "digits"}) {
		t.Errorf("BuiltinNames = %v", got)
	}
}

func dsWrite(t *testing.T, name, text string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestReadDataset(t *testing.T) {
	header := dsWrite(t, "h.csv", "a,label,b\n1,0,2\n3,2,4\n5,1,6\n")
	plain := dsWrite(t, "plain.csv", "1,2,0\n3,4,1\n")
	for _, tc := range []struct {
		name, path, col string
		x, y            []float64
		names           []string
		classes         int
	}{
		{"by name", header, "label", []float64{1, 2, 3, 4, 5, 6}, []float64{0, 2, 1}, []string{"a", "b"}, 3},
		{"by index", header, "1", []float64{1, 2, 3, 4, 5, 6}, []float64{0, 2, 1}, []string{"a", "b"}, 3},
		{"last", header, "", []float64{1, 0, 3, 2, 5, 1}, []float64{2, 4, 6}, []string{"a", "label"}, 7},
		{"negative index", header, "-3", []float64{0, 2, 2, 4, 1, 6}, []float64{1, 3, 5}, []string{"label", "b"}, 6},
		{"no header", plain, "", []float64{1, 2, 3, 4}, []float64{0, 1}, nil, 2},
		{"no header, index 0", plain, "0", []float64{2, 0, 4, 1}, []float64{1, 3}, nil, 4},
	} {
		ds, err := ReadDataset(tc.path, tc.col)
		if err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		if !slices.Equal(ds.X, tc.x) || !slices.Equal(ds.Y, tc.y) || !slices.Equal(ds.FeatureNames, tc.names) ||
			ds.Classes != tc.classes || ds.D != len(tc.x)/len(tc.y) || ds.N != len(tc.y) {
			t.Errorf("%s: X %v Y %v names %q classes %d (%d×%d)", tc.name, ds.X, ds.Y, ds.FeatureNames, ds.Classes, ds.N, ds.D)
		}
		if err := ds.Validate(); err != nil {
			t.Errorf("%s: %v", tc.name, err)
		}
	}
	if ds, _ := ReadDataset(header, ""); ds.Name != "h" {
		t.Errorf("name %q, want the file's base name", ds.Name)
	}
}

func TestReadDatasetInference(t *testing.T) {
	for _, tc := range []struct {
		name, labels string
		classes      int
	}{
		{"integers", "0 3 1", 4},
		{"binary", "1 0 1", 2},
		{"one class", "0 0 0", 1},
		{"non-integer", "0 1.5 1", 0},
		{"negative", "0 -1 1", 0},
		{"integer-valued floats", "0.0 2.0 1e0", 3},
		{"at the class cap", "0 1 999", 1000},
		{"beyond the class cap", "0 1 1000", 0},
	} {
		var b strings.Builder
		b.WriteString("x,y\n")
		for k, l := range strings.Fields(tc.labels) {
			b.WriteString(strings.Repeat("1", k+1) + "," + l + "\n")
		}
		ds, err := ReadDataset(dsWrite(t, "l.csv", b.String()), "y")
		if err != nil || ds.Classes != tc.classes {
			t.Errorf("%s: classes %v, %v; want %d", tc.name, ds.Classes, err, tc.classes)
		}
	}
}

func TestReadDatasetErrors(t *testing.T) {
	good := dsWrite(t, "g.csv", "a,label\n1,0\n2,1\n3,2\n")
	for _, tc := range []struct {
		name, text, col string
		classes         int // < 0: ReadDataset
		want            error
		msg             []string
	}{
		{"unknown column", "a,label\n1,0\n", "lbl", -1, gdiv.ErrParam, []string{"lbl"}},
		{"index out of range", "1,0\n", "5", -1, gdiv.ErrParam, []string{"5"}},
		{"two label columns", "1,0,2\n", "0:2", -1, gdiv.ErrParam, []string{"selects 2"}},
		{"label only", "label\n1\n", "label", -1, gdiv.ErrZeroDim, nil},
		{"NaN feature", "a,label\n1,0\nnan,1\n", "label", -1, gdiv.ErrNonFinite, []string{"line 3"}},
		{"ragged", "a,label\n1,0\n2\n", "label", -1, ErrFormat, []string{"line 3"}},
		{"label out of range", "a,label\n1,0\n2,1\n3,3\n", "label", 3, ErrLabel, []string{"data row 2", "label", "[0, 3)"}},
		{"non-integer label", "a,label\n1,0.5\n", "label", 2, ErrLabel, []string{"data row 0", "0.5"}},
		{"negative label", "a,label\n1,1\n1,-1\n", "", 2, ErrLabel, []string{"data row 1", "-1"}},
	} {
		path := dsWrite(t, "bad.csv", tc.text)
		var err error
		if tc.classes < 0 {
			_, err = ReadDataset(path, tc.col)
		} else {
			_, err = ReadDatasetClasses(path, tc.col, tc.classes)
		}
		if !errors.Is(err, tc.want) {
			t.Errorf("%s: error %v, want %v", tc.name, err, tc.want)
			continue
		}
		for _, m := range tc.msg {
			if !strings.Contains(err.Error(), m) {
				t.Errorf("%s: error %q does not mention %q", tc.name, err, m)
			}
		}
	}
	// Stating the task: integers read as a regression target.
	if ds, err := ReadDatasetClasses(good, "label", 0); err != nil || ds.Classes != 0 || !slices.Equal(ds.Y, []float64{0, 1, 2}) {
		t.Errorf("regression: %+v, %v", ds, err)
	}
	if ds, err := ReadDatasetClasses(good, "label", 5); err != nil || ds.Classes != 5 {
		t.Errorf("5 classes: %+v, %v", ds, err)
	}
	if _, err := ReadDataset(filepath.Join(t.TempDir(), "missing.csv"), ""); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
}

func TestValidate(t *testing.T) {
	ok := func() *Dataset {
		return &Dataset{Name: "v", X: []float64{1, 2, 3, 4, 5, 6}, Y: []float64{0, 1, 2}, N: 3, D: 2, Classes: 3}
	}
	if err := ok().Validate(); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		edit func(*Dataset)
		want error
		msg  []string
	}{
		{"empty", func(d *Dataset) { d.N, d.X, d.Y = 0, nil, nil }, gdiv.ErrEmpty, []string{`"v"`}},
		{"no features", func(d *Dataset) { d.D, d.X = 0, nil }, gdiv.ErrZeroDim, nil},
		{"negative shape", func(d *Dataset) { d.N = -1 }, gdiv.ErrShape, []string{"N = -1"}},
		{"short X", func(d *Dataset) { d.X = d.X[:5] }, gdiv.ErrShape, []string{"len(X) = 5", "6"}},
		{"label count", func(d *Dataset) { d.Y = d.Y[:2] }, gdiv.ErrShape, []string{"2 labels", "N = 3"}},
		{"feature names", func(d *Dataset) { d.FeatureNames = []string{"a"} }, gdiv.ErrShape, []string{"1 feature names"}},
		{"negative classes", func(d *Dataset) { d.Classes = -2 }, gdiv.ErrParam, []string{"Classes = -2"}},
		{"NaN feature", func(d *Dataset) { d.X[3] = math.NaN() }, gdiv.ErrNonFinite, []string{"row 1", "column 1"}},
		{"Inf label", func(d *Dataset) { d.Y[2] = math.Inf(-1) }, gdiv.ErrNonFinite, []string{"labels", "row 2"}},
		{"label out of range", func(d *Dataset) { d.Y[1] = 3 }, ErrLabel, []string{"row 1", "[0, 3)"}},
		{"non-integer label", func(d *Dataset) { d.Y[0] = 0.5 }, ErrLabel, []string{"row 0", "0.5"}},
		{"negative label", func(d *Dataset) { d.Y[2] = -1 }, ErrLabel, []string{"row 2"}},
	} {
		d := ok()
		tc.edit(d)
		err := d.Validate()
		if !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
			continue
		}
		for _, m := range tc.msg {
			if !strings.Contains(err.Error(), m) {
				t.Errorf("%s: error %q does not mention %q", tc.name, err, m)
			}
		}
	}
	// The same labels are fine for regression.
	d := ok()
	d.Y[0], d.Classes = 0.5, 0
	if err := d.Validate(); err != nil {
		t.Errorf("regression: %v", err)
	}
}

func TestStandardize(t *testing.T) {
	raw, _ := LoadBuiltin("digits")
	ds, sc := raw.Standardize()
	if ds.N != raw.N || ds.D != raw.D || !slices.Equal(ds.Y, raw.Y) || raw.X[2] != 5 {
		t.Fatal("Standardize changed the shape or labels, or modified its receiver")
	}
	constant := 0
	for j := range ds.D {
		var sum, ss float64
		for i := range ds.N {
			v := ds.X[i*ds.D+j]
			sum += v
			ss += v * v
		}
		mean, msq := sum/float64(ds.N), ss/float64(ds.N)
		if sc.Scale[j] == 1 && msq == 0 {
			constant++ // pixel_0 and a few others are always 0 in digits
			continue
		}
		if math.Abs(mean) > dsTolMoment || math.Abs(msq-1) > dsTolMoment {
			t.Errorf("column %d: mean %v, (1/N)Σx² %v", j, mean, msq)
		}
	}
	if constant == 0 || constant > 5 {
		t.Errorf("%d constant columns, want a few (pixel_0 is always 0)", constant)
	}
	// The Scaler reproduces the transform on other data.
	again, err := sc.Apply(raw)
	if err != nil || !slices.Equal(again.X, ds.X) {
		t.Errorf("Scaler.Apply differs from Standardize: %v", err)
	}
	row := slices.Clone(raw.Row(5))
	sc.Transform(row, row)
	if !slices.Equal(row, ds.Row(5)) {
		t.Error("Scaler.Transform differs from Standardize")
	}
	if _, err := sc.Apply(&Dataset{X: []float64{1}, Y: []float64{0}, N: 1, D: 1}); !errors.Is(err, gdiv.ErrShape) {
		t.Errorf("Apply with D = 1: %v", err)
	}
	// A constant non-zero column whose mean does not round exactly.
	c := &Dataset{X: []float64{0.1, 1, 0.1, 2, 0.1, 4}, Y: []float64{0, 0, 0}, N: 3, D: 2}
	cs, s := c.Standardize()
	if cs.X[0] != 0 || cs.X[2] != 0 || cs.X[4] != 0 || s.Mean[0] != 0.1 || s.Scale[0] != 1 {
		t.Errorf("constant column → %v, scaler %+v", cs.X, s)
	}
}

func TestSubsetBinaryClone(t *testing.T) {
	raw, _ := LoadBuiltin("digits")
	sub := raw.Subset([]int{5, 0, 5})
	if sub.N != 3 || !slices.Equal(sub.Row(0), raw.Row(5)) || !slices.Equal(sub.Row(1), raw.Row(0)) ||
		!slices.Equal(sub.Row(2), raw.Row(5)) || sub.Y[0] != raw.Y[5] || sub.Classes != 10 {
		t.Error("Subset rows differ")
	}
	sub.X[0] = -1
	if raw.Row(5)[0] == -1 {
		t.Error("Subset shares memory")
	}
	even := raw.Binary(func(y float64) bool { return int(y)%2 == 0 })
	counts := raw.ClassCounts()
	if got := even.ClassCounts(); even.Classes != 2 || got[1] != counts[0]+counts[2]+counts[4]+counts[6]+counts[8] || got[0]+got[1] != raw.N {
		t.Errorf("Binary: counts %v", got)
	}
	if even.Name != "digits/binary" || raw.Classes != 10 {
		t.Errorf("Binary: name %q, original classes %d", even.Name, raw.Classes)
	}
	if msg := probPanics(func() { raw.Subset([]int{raw.N}) }); !strings.HasPrefix(msg, "gdiv: ") {
		t.Errorf("Subset out of range: panic %q", msg)
	}
	if msg := probPanics(func() { (&Dataset{N: 2, D: 1, X: []float64{1}}).Standardize() }); !strings.HasPrefix(msg, "gdiv: ") {
		t.Errorf("Standardize inconsistent: panic %q", msg)
	}
}

// probPanics returns the panic message of f, or "" when f does not panic.
func probPanics(f func()) (msg string) {
	defer func() {
		if r := recover(); r != nil {
			msg = fmt.Sprint(r)
		}
	}()
	f()
	return ""
}
