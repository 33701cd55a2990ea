#!/bin/sh
# The main job of `make demo`: real training runs on the bundled
# scikit-learn digits data (testdata/digits.csv, 1797 examples, 64 pixels,
# 10 classes), with the Go reference trainer.
#
#   1. softmax regression trained three ways on the same example budget:
#      fixed batch 16, fixed batch 512, and the gradient-diversity policy
#      B = delta * B_S_hat + 1 (gdiv experiment adaptive);
#   2. one adaptive run with its history (CSV) and plot (PNG).
#
# Outputs go to ${OUT:-out/demo}.
set -eu
GDIV=${1:-bin/gdiv}
OUT=${OUT:-out/demo}
mkdir -p "$OUT"

step() { printf '\n== %s\n' "$*"; }

step "1/2 fixed batch 16 vs fixed batch 512 vs diversity-adaptive batch (softmax on digits, 20 passes, 5 seeds)"
"$GDIV" experiment adaptive --csv "$OUT/adaptive.csv" --plot "$OUT/adaptive.png"

step "2/2 one adaptive run, step by step (history and plot)"
"$GDIV" train --data digits --problem softmax --lr 0.05 --policy diversity --min-batch 16 --max-batch 1024 \
	--epochs 20 --seed 1 --out "$OUT/train_history.csv" --plot "$OUT/train_history.png"

printf '\nwrote %s/adaptive.{csv,png} and %s/train_history.{csv,png}\n' "$OUT" "$OUT"
