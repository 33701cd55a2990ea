#!/bin/sh
# The main job of `make demo`, on the bundled scikit-learn digits data
# (testdata/digits.csv: 1797 examples, 64 pixel features, a label column).
#
# For a generalized linear model f_i(w) = l_i(x_i^T w) the per-example
# gradient is l_i'(x_i^T w) x_i, a rescaled feature row; Theorem 1 bounds
# its batch-size bound from below by n min|x_i|^2 / sigma_max(X)^2 at every w.
# Below, the feature rows themselves stand in for the per-example gradients
# (the case l_i' = 1); the Go reference trainer will measure real gradients
# along a training run.
set -eu
GDIV=${1:-bin/gdiv}
DATA=testdata/digits.csv
X="--cols 0:64"

step() { printf '\n== %s\n' "$*"; }

step "1/5 Theorem 1: lower bound on B_S for ANY generalized linear model on digits"
"$GDIV" bound glm $X "$DATA"

step "2/5 diversity and batch-size bound of the 1797 digit feature rows"
"$GDIV" stats $X "$DATA"

step "3/5 dropout p=0.5: closed form (eq. 22) next to 200 Monte Carlo draws"
"$GDIV" dim --mechanism dropout --p 0.5 --samples 200 --seed 1 $X "$DATA"

step "4/5 stochastic quantization (QSGD, 1 level; eq. 24) and Langevin noise (std 1; eq. 23)"
"$GDIV" dim --mechanism quantize --levels 1 $X "$DATA"
"$GDIV" dim --mechanism langevin --std 1 $X "$DATA"

step "5/5 Theorem 2: sparse-conflict bound (support = non-zero pixels)"
"$GDIV" bound sparse $X "$DATA"
