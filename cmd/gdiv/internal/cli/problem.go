package cli

import (
	"flag"
	"os"
	"slices"
	"strconv"
	"strings"

	"github.com/gdiv/gdiv/gdiv"
	"github.com/gdiv/gdiv/gdiv/data"
	"github.com/gdiv/gdiv/gdiv/train"
)

// ProblemFlags select a data set and a problem; gdiv train and the
// experiments share them.
type ProblemFlags struct {
	Data, Label, Positive string    // --data, --label, --positive
	Classes               int       // --classes (-1: infer)
	NoStandardize         bool      // --no-standardize
	Problem               string    // --problem
	Hidden                int       // --hidden
	Activation            string    // --activation
	L2                    float64   // --l2
	MaxBytes              *ByteSize // --max-bytes
}

// AddProblemFlags defines the problem flags on fs, with --problem defaulting
// to defProblem.
func AddProblemFlags(fs *flag.FlagSet, defProblem string) *ProblemFlags {
	f := &ProblemFlags{}
	fs.StringVar(&f.Data, "data", "", "digits, breast_cancer or a file")
	fs.StringVar(&f.Label, "label", "", "label column")
	fs.IntVar(&f.Classes, "classes", -1, "number of classes of FILE (0 = regression)")
	fs.StringVar(&f.Positive, "positive", "", "labels of class 1 for logistic")
	fs.BoolVar(&f.NoStandardize, "no-standardize", false, "keep raw features")
	fs.StringVar(&f.Problem, "problem", defProblem, "leastsquares, logistic, softmax or mlp")
	fs.IntVar(&f.Hidden, "hidden", 32, "MLP hidden units")
	fs.StringVar(&f.Activation, "activation", "tanh", "MLP activation")
	fs.Float64Var(&f.L2, "l2", 1e-4, "L2 regularization")
	f.MaxBytes = AddMaxBytes(fs)
	return f
}

// ProblemBytes is about what training the problem the flags name on a data
// set of d features and k classes holds in memory: 8 float64 vectors of its
// parameters (weights, initial weights, the next step, the gradient sum and
// scratch) and the MLP's hidden-unit scratch.
func (f *ProblemFlags) ProblemBytes(d, k int) (params, bytes float64) {
	fd, fk, fh := float64(d), float64(max(k, 1)), float64(f.Hidden)
	switch f.Problem {
	case "mlp":
		params = fh*(fd+1) + fk*(fh+1)
		return params, 8 * (8*params + 3*fh)
	case "leastsquares", "logistic":
		params = fd + 1
	default:
		params = fk * (fd + 1)
	}
	return params, 8 * 8 * params
}

// Dataset loads and prepares the data set the flags name.
func (f *ProblemFlags) Dataset() (*data.Dataset, error) {
	if f.Data == "" {
		return nil, Usagef("missing --data (%s, or a file)", strings.Join(data.BuiltinNames(), ", "))
	}
	var ds *data.Dataset
	var err error
	if slices.Contains(data.BuiltinNames(), f.Data) {
		if f.Label != "" || f.Classes >= 0 {
			return nil, Usagef("--label and --classes apply to a data file, not to the bundled %s", f.Data)
		}
		ds, err = data.LoadBuiltin(f.Data)
	} else {
		if _, statErr := os.Stat(f.Data); statErr != nil && !strings.ContainsAny(f.Data, "./") {
			return nil, Usagef("unknown data set %q: want %s or a file", f.Data, strings.Join(data.BuiltinNames(), ", "))
		}
		ds, err = data.ReadDatasetLimit(f.Data, f.Label, f.Classes, int64(*f.MaxBytes))
	}
	if err != nil {
		return nil, err
	}
	if f.Positive != "" {
		if ds.Classes < 2 {
			return nil, Usagef("--positive needs class labels; %s has real-valued targets", f.Data)
		}
		pos := map[float64]bool{}
		for _, s := range strings.Split(f.Positive, ",") {
			v, err := strconv.Atoi(strings.TrimSpace(s))
			if err != nil || v < 0 || v >= ds.Classes {
				return nil, Usagef("--positive %q: %q is not a class label of %s (0..%d)", f.Positive, s, f.Data, ds.Classes-1)
			}
			pos[float64(v)] = true
		}
		ds = ds.Binary(func(y float64) bool { return pos[y] })
	}
	if !f.NoStandardize {
		ds, _ = ds.Standardize()
	}
	return ds, nil
}

// Build returns the problem over ds.
func (f *ProblemFlags) Build(ds *data.Dataset) (train.Problem, error) {
	switch f.Problem {
	case "leastsquares":
		return train.NewLeastSquares(ds, f.L2)
	case "logistic":
		if ds.Classes > 2 {
			return nil, Usagef("--problem logistic needs 2 classes; %s has %d (use --problem softmax, or --positive LIST)", f.Data, ds.Classes)
		}
		return train.NewLogistic(ds, f.L2)
	case "softmax":
		return train.NewSoftmax(ds, f.L2)
	case "mlp":
		act, err := train.ParseActivation(f.Activation)
		if err != nil {
			return nil, Usagef("--activation %q: want tanh or relu", f.Activation)
		}
		return train.NewMLP(ds, f.Hidden, act, f.L2)
	}
	return nil, Usagef("unknown --problem %q: want leastsquares, logistic, softmax or mlp", f.Problem)
}

// PolicyFlags configure the diversity-driven batch-size policy.
type PolicyFlags struct {
	Policy                                 string  // --policy ("" or "diversity")
	Delta, Hysteresis, MaxGrowth           float64 // --delta, --hysteresis, --max-growth
	MinBatch, MaxBatch, MultipleOf, Warmup int     // --min-batch, --max-batch, --multiple-of, --warmup
	LRRule                                 string  // --lr-rule
}

// AddPolicyFlags defines the policy flags on fs.
func AddPolicyFlags(fs *flag.FlagSet) *PolicyFlags {
	f := &PolicyFlags{}
	fs.StringVar(&f.Policy, "policy", "", "diversity")
	fs.Float64Var(&f.Delta, "delta", 1, "delta in B = delta*B_S + 1")
	fs.IntVar(&f.MinBatch, "min-batch", 2, "smallest batch")
	fs.IntVar(&f.MaxBatch, "max-batch", 0, "largest batch (0 = n)")
	fs.IntVar(&f.MultipleOf, "multiple-of", 1, "batch granularity")
	fs.Float64Var(&f.Hysteresis, "hysteresis", 0, "relative change threshold")
	fs.Float64Var(&f.MaxGrowth, "max-growth", 2, "largest factor per decision")
	fs.IntVar(&f.Warmup, "warmup", 0, "steps before the policy acts")
	fs.StringVar(&f.LRRule, "lr-rule", "linear", "linear, sqrt or none")
	return f
}

var policyOnlyFlags = []string{"delta", "min-batch", "max-batch", "multiple-of", "hysteresis", "max-growth", "warmup", "lr-rule"}

// Build returns the policy (nil for a fixed batch); set holds the flags
// given (Given).
func (f *PolicyFlags) Build(set map[string]bool) (*gdiv.BatchSizePolicy, error) {
	if f.Policy == "" {
		for _, name := range policyOnlyFlags {
			if set[name] {
				return nil, Usagef("--%s applies only with --policy diversity", name)
			}
		}
		return nil, nil
	}
	if f.Policy != "diversity" {
		return nil, Usagef("unknown --policy %q: want diversity", f.Policy)
	}
	rule, err := gdiv.ParseLRRule(f.LRRule)
	if err != nil {
		return nil, Usagef("--lr-rule %q: want linear, sqrt or none", f.LRRule)
	}
	p := &gdiv.BatchSizePolicy{Delta: f.Delta, MinBatch: f.MinBatch, MaxBatch: f.MaxBatch,
		MultipleOf: f.MultipleOf, Hysteresis: f.Hysteresis, MaxGrowth: f.MaxGrowth, Warmup: f.Warmup, LR: rule}
	if err := p.Validate(); err != nil {
		return nil, Usagef("%s", strings.TrimPrefix(err.Error(), "gdiv: "))
	}
	return p, nil
}
