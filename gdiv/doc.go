// Package gdiv measures gradient diversity and acts on it: the statistics,
// unbiased estimators, diversity-inducing mechanisms and bounds of
//
//	D. Yin, A. Pananjady, M. Lam, D. Papailiopoulos, K. Ramchandran,
//	P. Bartlett. "Gradient Diversity: a Key Ingredient for Scalable
//	Distributed Learning". AISTATS 2018.
//
// Equation numbers below are the paper's. Every formula of the project —
// statistics, estimators, batch-size policy, mechanisms, bounds — lives in
// this package; the other packages call it and re-derive none of them:
//
//	gdiv/data    readers (CSV, .npy, Arrow IPC) and data sets
//	gdiv/train   the problems (per-example losses, eq. 1), the reference
//	             mini-batch SGD (eqs. 2–3), which takes its estimates from
//	             EstimateBatch / Estimator and its batch sizes from
//	             BatchSizePolicy, and synthetic data generators
//	pybridge     the Python extension's boundary
//	cmd/gdiv     the CLI
//
// Helpers exported for them: AccumulateRows and SqNorm (the kernels of the
// statistics), NonFiniteAt and IsFinite (the error conventions below),
// BatchSizePolicy.Resolved and RoundUpMultiple (the policy's defaults and
// rounding).
//
// # Statistics (Section 4.1, Appendix B.1)
//
// For per-example gradients g_1, …, g_n ∈ R^d, given as a row-major n×d
// buffer of float32 or float64 (always accumulated in float64):
//
//	Δ   = Σ‖g_i‖² / ‖Σ g_i‖²                    gradient diversity (eq. 4)
//	B_S = n·Δ = M²/G                             batch-size bound (Def. 5)
//	M²  = (1/n) Σ‖g_i‖²,  G = ‖(1/n) Σ g_i‖²     (Appendix B.1)
//	noise_scale = trΣ/G = (M² − G)/G = B_S − 1    (McCandlish et al.'s B_simple)
//
// Δ ≥ 1/n, so B_S ≥ 1. When the gradients cancel exactly (Σ g_i = 0 but not
// all g_i = 0), Δ = B_S = +Inf. All-zero gradients (0/0), empty input,
// d = 0 and NaN/Inf values are errors, never NaN results. See ComputeStats,
// ComputeStats32, StatsFromSums and the mergeable Accumulator (chunked and
// distributed use). The differential diversity Δ̄_S(w, w') and bound
// B̄_S(w, w') of Definition 6 are the same statistics over the rows
// g_i(w) − g_i(w'): DifferentialStats.
//
// # Estimators (Lemma 1, eq. 15; DESIGN decision 3)
//
// From one batch of b per-example gradients drawn with replacement,
//
//	M̂² = (1/b) Σ‖g_i‖²,   Ĝ = (b‖ḡ‖² − M̂²)/(b − 1),   B̂_S = M̂²/Ĝ,
//
// with M̂² and Ĝ unbiased (E‖ḡ‖² = G + (M² − G)/b, the identity behind
// eq. 15). Without replacement from n examples, Ĝ = (‖ḡ‖² − c M̂²)/(1 − c)
// with c = (n − b)/(b(n − 1)). Ĝ ≤ 0 means "no evidence of signal": B̂_S is
// +Inf and Estimate.NoSignal is set. Estimates are smoothed as a ratio of
// debiased EMAs (Estimator), never an EMA of ratios and never b·Δ_batch
// (which cannot exceed b). EstimateTwoScale is the unbiased pair of
// McCandlish et al. for data-parallel training without per-example
// gradients: local batch b vs. global batch P·b. Frameworks that reduce on a
// device pass two scalars: BatchSumsFromScalars gives Σ‖g_i‖² and ‖Σ g_i‖²
// from the measured sums (‖Σ g_i‖² = b²‖ḡ‖² for a mean-reduced loss; both
// divided by the square of a mixed-precision loss scale).
//
// # Diversity-inducing mechanisms (Section 4.4, eqs. 6 and 22–24)
//
// A mechanism replaces g_i by an independent random surrogate g_i^DIM
// (fresh randomness per example and per call, from an explicit
// math/rand/v2 source). Its diversity is a ratio of expectations (eq. 6):
//
//	Δ^DIM = Σ_i E‖g_i^DIM‖² / E‖Σ_i g_i^DIM‖²
//	      = Σ_i m_i / (Σ_i m_i + a²(‖Σ g_i‖² − Σ‖g_i‖²)),
//
// where m_i = E‖g_i^DIM‖² and E[g_i^DIM] = a·g_i:
//
//	Dropout(p)        m_i = (1−p)‖g_i‖²,       a = 1−p   (eq. 22; Rescale: m_i = ‖g_i‖²/(1−p), a = 1)
//	Langevin(σ)       m_i = ‖g_i‖² + dσ²,      a = 1     (eq. 23; σ is a standard deviation)
//	Quantize(s = 1)   m_i = ‖g_i‖₂‖g_i‖₁,      a = 1     (eq. 24; QSGD second moment for s > 1)
//
// By Theorem 9, B_S^DIM ≥ B_S whenever B_S ≤ n; above n the mechanisms pull
// Δ toward 1 but keep B_S^DIM > n. Expected gives the closed form and
// MonteCarlo an independent simulation with a standard error. Langevin
// noise summed over a batch is one Gaussian, Σ_i ξ_i ~ N(0, bσ²I)
// (Langevin.SumNoiseStd), so a trainer with only the batch gradient adds it
// once and counts Σ‖g_i‖² + b·d·σ² (Langevin.ExpectedSumSqNorms): M̂² moves
// by dσ², Ĝ stays unbiased.
//
// # Bounds (Theorems 1–2; eqs. 9 and 11)
//
//	Theorem 1 (generalized linear models):  B_S(w) ≥ n·min_i‖x_i‖² / σ²_max(X)
//	Theorem 2 (sparse conflicts):           B_S(w) ≥ n/(ρ + 1),
//	                                        ρ = max degree of the support-overlap graph
//	eq. (9)  (convex):           γ ≤ 2 / (β(1 + 1{B>1}/(n−1) + (B−1)/B̄_S))
//	eq. (11) (strongly convex):  γ ≤ 2 / ((β+λ)(1 + 1{B>1}/(n−1) + (B−1)/B̄_S)),  with B ≤ 1/(2γλ)
//
// Both lower bounds hold for B̄_S(w, w') too (Appendix E.5).
//
// # The batch-size policy (Lemma 1, Theorem 3)
//
// For the paper's sum step w ← w − γ Σ_{i∈batch} g_i (eq. 2), Lemma 1 gives
// E‖w_{k+1} − w*‖² = ‖w_k − w*‖² − 2γB⟨∇F, w_k − w*⟩ + γ²(B·M² + B(B−1)·G)
// (gdiv/train verifies it exactly by enumerating every batch).
// BatchSizePolicy chooses
//
//	B_next = δ·B̂_S + 1,
//
// the largest batch for which Theorem 3 keeps mini-batch SGD within a
// factor (1 + δ/2) of serial SGD per gradient computed; it is clamped to
// [MinBatch, MaxBatch], rounded down to a multiple of the worker count,
// limited to a growth factor per decision, damped by hysteresis and held
// during a warm-up. An estimate with no signal (Ĝ ≤ 0) moves toward
// MaxBatch. ScaleLR gives the LR rules for a mean-reduced loss when B
// changes: linear (keeps the sum step's γ), sqrt, none; AdaScaleGain the
// adascale rule. A Controller caps the factor (MaxLRFactor) and can ramp
// it after each batch change (LRWarmupSteps W, after Goyal et al. 2017):
// from the factor f₀ of the step before the change to the rule's f,
//
//	f_k = f₀ + (k/W)·(f − f₀),   k = 1, …, W,
//
// at once when f ≤ f₀ (a smaller batch).
//
// # Conventions
//
// Following gonum: misuse (buffer lengths that disagree with the stated
// shape, negative sizes) panics with a "gdiv: " message, and the doc says
// so; bad data (empty, non-finite, degenerate) returns an error wrapping
// one of the exported Err sentinels, which names the problem (row and
// column for non-finite values). In-place results overwrite the caller's
// buffer. Randomness always comes from a caller-supplied source.
package gdiv
