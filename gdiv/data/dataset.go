package data

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"path/filepath"
	"slices"
	"strings"

	"github.com/gdiv/gdiv/gdiv"

	datasets "github.com/gdiv/gdiv/testdata"
)

// Labelled data sets: the examples z_i = (x_i, y_i) behind a Problem
// (Section 3). Features are a dense row-major N×D float64 matrix; labels are
// class indices 0..K−1 stored as float64, or real regression targets.

// ErrLabel: a label is not valid for the data set's task (a class label that
// is not an integer in [0, Classes), or that a binary loss cannot use).
var ErrLabel = errors.New("gdiv: invalid label")

// MaxInferredClasses is the largest number of classes ReadDataset infers
// from integer labels. A label column of non-negative integers whose
// maximum is MaxInferredClasses or more is read as a regression target (use
// ReadDatasetClasses to say which task it is).
const MaxInferredClasses = 1000

// Dataset is a labelled data set of N examples with D features each.
//
// A Dataset is a plain value: fill it directly or with the readers and
// generators below, and check it with Validate (every Problem constructor
// does). Methods that return a *Dataset return a new one that shares no
// memory with the receiver.
type Dataset struct {
	Name string
	// X holds the features, row-major N×D: feature j of example i is
	// X[i*D+j].
	X []float64
	// Y holds one label per example: a class index 0..Classes−1 stored as
	// a float64 when Classes > 0, a real target when Classes == 0.
	Y    []float64
	N, D int
	// Classes is 0 for regression, 2 for binary and K for K-class
	// classification.
	Classes int
	// FeatureNames optionally names the D feature columns (nil when
	// unknown).
	FeatureNames []string
}

// Row returns the features of example i as a sub-slice of X (not a copy).
// It panics if i is out of range.
func (ds *Dataset) Row(i int) []float64 {
	if i < 0 || i >= ds.N {
		panic(fmt.Sprintf("gdiv: example %d out of range [0, %d)", i, ds.N))
	}
	return ds.X[i*ds.D : (i+1)*ds.D : (i+1)*ds.D]
}

// Validate checks that the data set is usable: N ≥ 1 (ErrEmpty), D ≥ 1
// (ErrZeroDim), len(X) = N·D, len(Y) = N and len(FeatureNames) ∈ {0, D}
// (ErrShape), Classes ≥ 0 (ErrParam), finite features and labels
// (ErrNonFinite, naming the row and column) and, when Classes > 0, every
// label an integer in [0, Classes) (ErrLabel, naming the row and value).
// Rows are 0-based. It returns the first problem found.
func (ds *Dataset) Validate() error {
	name := ds.DisplayName()
	switch {
	case ds.N < 0 || ds.D < 0:
		return fmt.Errorf("%w: data set %s has negative shape N = %d, D = %d", gdiv.ErrShape, name, ds.N, ds.D)
	case ds.N == 0:
		return fmt.Errorf("%w (data set %s)", gdiv.ErrEmpty, name)
	case ds.D == 0:
		return fmt.Errorf("%w (data set %s has no feature columns)", gdiv.ErrZeroDim, name)
	case len(ds.X) != ds.N*ds.D:
		return fmt.Errorf("%w: data set %s: len(X) = %d, want N·D = %d·%d = %d", gdiv.ErrShape, name, len(ds.X), ds.N, ds.D, ds.N*ds.D)
	case len(ds.Y) != ds.N:
		return fmt.Errorf("%w: data set %s: %d labels (len(Y)) for N = %d examples", gdiv.ErrShape, name, len(ds.Y), ds.N)
	case ds.FeatureNames != nil && len(ds.FeatureNames) != ds.D:
		return fmt.Errorf("%w: data set %s: %d feature names for D = %d features", gdiv.ErrShape, name, len(ds.FeatureNames), ds.D)
	case ds.Classes < 0:
		return fmt.Errorf("%w: data set %s: Classes = %d, want 0 (regression) or the number of classes", gdiv.ErrParam, name, ds.Classes)
	}
	if err := gdiv.NonFiniteAt(ds.X, ds.D, "the features of data set "+name); err != nil {
		return err
	}
	for i, y := range ds.Y {
		if y-y != 0 {
			return fmt.Errorf("%w in the labels of data set %s at row %d: %v", gdiv.ErrNonFinite, name, i, y)
		}
	}
	if ds.Classes > 0 {
		if i, ok := badLabel(ds.Y, ds.Classes); !ok {
			return fmt.Errorf("%w in data set %s at row %d: %v is not a class index: want an integer in [0, %d)", ErrLabel, name, i, ds.Y[i], ds.Classes)
		}
	}
	return nil
}

// badLabel returns the first row whose label is not an integer in
// [0, classes), and false; or 0, true when all labels are valid.
func badLabel(y []float64, classes int) (int, bool) {
	for i, v := range y {
		if !(v >= 0 && v < float64(classes) && v == math.Trunc(v)) {
			return i, false
		}
	}
	return 0, true
}

// DisplayName returns the data set's name quoted for error messages, or
// "(unnamed)".
func (ds *Dataset) DisplayName() string {
	if ds.Name == "" {
		return "(unnamed)"
	}
	return fmt.Sprintf("%q", ds.Name)
}

// checkLayout panics unless the lengths of X and Y agree with N and D.
func (ds *Dataset) checkLayout(op string) {
	if ds.N < 0 || ds.D < 0 || len(ds.X) != ds.N*ds.D || len(ds.Y) != ds.N {
		panic(fmt.Sprintf("gdiv: %s: inconsistent data set: N = %d, D = %d, len(X) = %d, len(Y) = %d (see Validate)",
			op, ds.N, ds.D, len(ds.X), len(ds.Y)))
	}
}

// Clone returns a deep copy of ds.
func (ds *Dataset) Clone() *Dataset {
	out := *ds
	out.X = slices.Clone(ds.X)
	out.Y = slices.Clone(ds.Y)
	out.FeatureNames = slices.Clone(ds.FeatureNames)
	return &out
}

// ClassCounts returns the number of examples of each class, len Classes.
// It panics if Classes ≤ 0 or a label is not a class index (see Validate).
func (ds *Dataset) ClassCounts() []int {
	if ds.Classes <= 0 {
		panic(fmt.Sprintf("gdiv: ClassCounts of a data set with Classes = %d", ds.Classes))
	}
	counts := make([]int, ds.Classes)
	for i, y := range ds.Y {
		k := int(y)
		if float64(k) != y || k < 0 || k >= ds.Classes {
			panic(fmt.Sprintf("gdiv: ClassCounts: label %v at row %d is not a class index in [0, %d)", y, i, ds.Classes))
		}
		counts[k]++
	}
	return counts
}

// Subset returns the examples idx[0], idx[1], … in that order (indices may
// repeat). It panics if an index is out of range or ds is inconsistent.
func (ds *Dataset) Subset(idx []int) *Dataset {
	ds.checkLayout("Subset")
	out := &Dataset{
		Name:         ds.Name,
		X:            make([]float64, len(idx)*ds.D),
		Y:            make([]float64, len(idx)),
		N:            len(idx),
		D:            ds.D,
		Classes:      ds.Classes,
		FeatureNames: slices.Clone(ds.FeatureNames),
	}
	for k, i := range idx {
		copy(out.X[k*ds.D:(k+1)*ds.D], ds.Row(i))
		out.Y[k] = ds.Y[i]
	}
	return out
}

// Binary returns a two-class copy of ds whose label is 1 where positive(y)
// holds for the original label y and 0 elsewhere, e.g. "the digit is even"
// with positive = func(y float64) bool { return int(y)%2 == 0 }. The name
// gets the suffix "/binary". It panics if positive is nil or ds is
// inconsistent.
func (ds *Dataset) Binary(positive func(y float64) bool) *Dataset {
	if positive == nil {
		panic("gdiv: Binary: nil predicate")
	}
	ds.checkLayout("Binary")
	out := ds.Clone()
	out.Name = ds.Name + "/binary"
	out.Classes = 2
	for i, y := range ds.Y {
		if positive(y) {
			out.Y[i] = 1
		} else {
			out.Y[i] = 0
		}
	}
	return out
}

// Scaler is an affine per-feature transform x_j ↦ (x_j − Mean[j])/Scale[j],
// as fitted by Dataset.Standardize, so that held-out data can be
// transformed exactly as the training data was.
type Scaler struct {
	Mean  []float64
	Scale []float64 // > 0; 1 for a constant column
}

// Transform writes the transformed feature vector x into dst (both of
// length len(s.Mean); dst may be x). It panics if the lengths differ.
func (s Scaler) Transform(dst, x []float64) {
	if len(s.Scale) != len(s.Mean) || len(x) != len(s.Mean) || len(dst) != len(s.Mean) {
		panic(fmt.Sprintf("gdiv: Scaler.Transform: len(dst) = %d, len(x) = %d, scaler has %d means and %d scales",
			len(dst), len(x), len(s.Mean), len(s.Scale)))
	}
	for j, v := range x {
		dst[j] = (v - s.Mean[j]) / s.Scale[j]
	}
}

// Apply returns a transformed copy of ds. It returns an ErrShape error if
// ds.D differs from the scaler's dimension, and panics if ds is
// inconsistent.
func (s Scaler) Apply(ds *Dataset) (*Dataset, error) {
	ds.checkLayout("Scaler.Apply")
	if ds.D != len(s.Mean) || len(s.Scale) != len(s.Mean) {
		return nil, fmt.Errorf("%w: scaler fitted on %d features applied to data set %s with D = %d",
			gdiv.ErrShape, len(s.Mean), ds.DisplayName(), ds.D)
	}
	out := ds.Clone()
	for i := range out.N {
		r := out.Row(i)
		s.Transform(r, r)
	}
	return out, nil
}

// Standardize returns a copy of ds with zero-mean, unit-variance features,
// and the Scaler that did it. Means and standard deviations are those of
// the N rows (population variance, divisor N, as scikit-learn's
// StandardScaler), so every column of the result has mean 0 and
// (1/N)Σx² = 1 up to rounding. A constant column (all values equal) gets
// Scale 1 and becomes exactly 0. Labels are unchanged.
//
// It panics if ds is empty or inconsistent; non-finite features give
// non-finite results (call Validate first).
func (ds *Dataset) Standardize() (*Dataset, Scaler) {
	ds.checkLayout("Standardize")
	if ds.N == 0 {
		panic("gdiv: Standardize: empty data set")
	}
	n, d := ds.N, ds.D
	s := Scaler{Mean: make([]float64, d), Scale: make([]float64, d)}
	for j := range d {
		lo, hi := ds.X[j], ds.X[j]
		var sum float64
		for i := range n {
			v := ds.X[i*d+j]
			sum += v
			lo, hi = min(lo, v), max(hi, v)
		}
		if lo == hi {
			s.Mean[j], s.Scale[j] = lo, 1
			continue
		}
		mean := sum / float64(n)
		var ss float64
		for i := range n {
			dv := ds.X[i*d+j] - mean
			ss += dv * dv
		}
		s.Mean[j] = mean
		s.Scale[j] = math.Sqrt(ss / float64(n))
	}
	out, _ := s.Apply(ds)
	return out, s
}

// ReadDataset reads a labelled data set from a matrix file (any format
// ReadMatrixFile reads: CSV with or without a header, TSV, .npy, Arrow IPC).
// labelCol names the label column: "" means the last column, otherwise a
// column name (from a CSV header or Arrow schema) or an index ("0", "-1");
// every other column is a feature, in file order.
//
// The task is inferred from the labels: when every label is a non-negative
// integer and the largest, m, is below MaxInferredClasses, the data set is
// classification with Classes = m + 1; otherwise it is regression (Classes
// = 0). Use ReadDatasetClasses to state the task instead (e.g. for integer
// regression targets, or for a test split that lacks the largest class).
//
// Errors: those of ReadMatrixFile; ErrParam for a label column that is
// unknown or does not select exactly one column; ErrZeroDim when the file
// has no column besides the label.
func ReadDataset(path, labelCol string) (*Dataset, error) {
	return readDataset(path, labelCol, -1)
}

// ReadDatasetClasses is ReadDataset with the task stated: classes = 0 reads
// the label column as a real regression target; classes ≥ 1 requires every
// label to be an integer in [0, classes) and returns an ErrLabel error
// naming the first (0-based) data row that is not.
// It panics if classes is negative.
func ReadDatasetClasses(path, labelCol string, classes int) (*Dataset, error) {
	if classes < 0 {
		panic(fmt.Sprintf("gdiv: ReadDatasetClasses: negative number of classes %d", classes))
	}
	return readDataset(path, labelCol, classes)
}

// ReadDatasetLimit is ReadDataset (classes < 0: the task is inferred) or
// ReadDatasetClasses (classes ≥ 0) reading at most maxBytes bytes of the
// file, as ReadMatrixFileLimit does (maxBytes ≤ 0: no limit).
func ReadDatasetLimit(path, labelCol string, classes int, maxBytes int64) (*Dataset, error) {
	return readDatasetLimit(path, labelCol, classes, maxBytes)
}

func readDataset(path, labelCol string, classes int) (*Dataset, error) {
	return readDatasetLimit(path, labelCol, classes, 0)
}

func readDatasetLimit(path, labelCol string, classes int, maxBytes int64) (*Dataset, error) {
	m, err := ReadMatrixFileLimit(path, maxBytes)
	if err != nil {
		return nil, err
	}
	name := strings.TrimSuffix(filepath.Base(path), filepath.Ext(path))
	return datasetFromMatrix(m, name, path, labelCol, classes)
}

// datasetFromMatrix splits m into features and the label column; classes
// < 0 infers the task.
func datasetFromMatrix(m *Matrix, name, file, labelCol string, classes int) (*Dataset, error) {
	spec := labelCol
	if strings.TrimSpace(spec) == "" {
		spec = "-1"
	}
	cols, err := m.columnIndices(spec)
	if err != nil {
		return nil, fmt.Errorf("%s: label column: %w", file, err)
	}
	if len(cols) != 1 {
		return nil, fmt.Errorf("%w: %s: label column %q selects %d columns, want one", gdiv.ErrParam, file, labelCol, len(cols))
	}
	lc := cols[0]
	if m.Cols < 2 {
		return nil, fmt.Errorf("%w: %s has only the label column, no features", gdiv.ErrZeroDim, file)
	}
	d := m.Cols - 1
	ds := &Dataset{Name: name, X: make([]float64, m.Rows*d), Y: make([]float64, m.Rows), N: m.Rows, D: d}
	if m.Names != nil {
		ds.FeatureNames = make([]string, 0, d)
		ds.FeatureNames = append(ds.FeatureNames, m.Names[:lc]...)
		ds.FeatureNames = append(ds.FeatureNames, m.Names[lc+1:]...)
	}
	for i := range m.Rows {
		r := m.Row(i)
		x := ds.X[i*d : (i+1)*d]
		copy(x, r[:lc])
		copy(x[lc:], r[lc+1:])
		ds.Y[i] = r[lc]
	}
	if classes < 0 {
		classes = inferClasses(ds.Y)
	} else if classes > 0 {
		if i, ok := badLabel(ds.Y, classes); !ok {
			return nil, fmt.Errorf("%w in %s, data row %d (0-based), label column %q: %v is not a class index: want an integer in [0, %d) for %d classes",
				ErrLabel, file, i, labelName(m, lc), ds.Y[i], classes, classes)
		}
	}
	ds.Classes = classes
	return ds, nil
}

func labelName(m *Matrix, j int) string {
	if m.Names != nil {
		return m.Names[j]
	}
	return fmt.Sprint(j)
}

// inferClasses returns max+1 when every label is a non-negative integer
// below MaxInferredClasses, and 0 (regression) otherwise.
func inferClasses(y []float64) int {
	top := -1.0
	for _, v := range y {
		if !(v >= 0 && v < MaxInferredClasses && v == math.Trunc(v)) {
			return 0
		}
		top = max(top, v)
	}
	return int(top) + 1
}

// builtin describes a data set embedded in the binary.
type builtin struct {
	csv     []byte
	file    string
	classes int
}

var builtins = map[string]builtin{
	"digits":        {datasets.DigitsCSV, "digits.csv", 10},
	"breast_cancer": {datasets.BreastCancerCSV, "breast_cancer.csv", 2},
}

// BuiltinNames returns the names LoadBuiltin accepts, sorted.
func BuiltinNames() []string {
	names := make([]string, 0, len(builtins))
	for k := range builtins {
		names = append(names, k)
	}
	slices.Sort(names)
	return names
}

// LoadBuiltin returns a fresh copy of a small real data set embedded in
// the binary (from testdata/, see its README for sources and licences):
//
//	"digits"         1797 × 64, 10 classes: 8×8 images of handwritten digits,
//	                 pixel intensities 0–16 (UCI optical digits, test set)
//	"breast_cancer"  569 × 30, 2 classes: 0 = malignant, 1 = benign
//	                 (Breast Cancer Wisconsin, Diagnostic)
//
// The features are as recorded (not standardized; see Standardize) and
// FeatureNames holds the column names. An unknown name returns an ErrParam
// error listing the known ones.
func LoadBuiltin(name string) (*Dataset, error) {
	b, ok := builtins[name]
	if !ok {
		return nil, fmt.Errorf("%w: unknown built-in data set %q (known: %s)", gdiv.ErrParam, name, strings.Join(BuiltinNames(), ", "))
	}
	m, err := ReadCSV(bytes.NewReader(b.csv), b.file)
	if err != nil {
		return nil, err
	}
	ds, err := datasetFromMatrix(m, name, b.file, "label", b.classes)
	if err != nil {
		return nil, err
	}
	return ds, ds.Validate()
}
