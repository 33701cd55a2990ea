// Package train holds the problems and the reference trainer of
//
//	D. Yin et al. "Gradient Diversity: a Key Ingredient for Scalable
//	Distributed Learning". AISTATS 2018.
//
// It uses package gdiv's estimators (EstimateBatch, Estimator), batch-size
// policy (BatchSizePolicy, ScaleLR) and mechanisms; it does not re-derive
// them. What it adds are the problems' losses and gradients and the SGD
// loop. Equation numbers are the paper's.
//
// # Problems (Section 3, eq. 1)
//
// A Problem is a per-example loss f_i(w) with its gradient; the empirical
// risk is F(w) = (1/n) Σ f_i(w) (FullLoss), and PerExampleGrads gives the
// rows g_i = ∇f_i(w) that gdiv's statistics take. Built in, over a
// data.Dataset:
//
//	LeastSquares  ½(x_iᵀw + b − y_i)²
//	Logistic      log(1 + e^{−ỹ_i(x_iᵀw + b)}),  ỹ_i = ±1
//	Softmax       multinomial cross-entropy
//	MLP           one hidden layer (tanh or ReLU), softmax output
//
// An L2 term (λ/2)‖W‖² is part of EVERY f_i (so λW is in every per-example
// gradient: that is the paper's f_i when a regularizer is used); intercepts
// are not penalized. ProblemFunc adapts closures.
//
// # Generators (Corollaries 1–2, Theorem 2, Section 6)
//
// GaussianDataset and RademacherDataset draw the features of Corollaries
// 1–2, SparseConflictDataset the sparse supports of
// Theorem 2 (ExpectedConflictDegree is its mean conflict degree), Replicate
// the paper's r-replication (a random n/r of the points filled back to n by
// sampling them) and Tile exact r-fold tiling (Δ is divided by r, B_S is
// unchanged).
//
// # Mini-batch SGD (eqs. 2–3)
//
// SGD is the reference trainer:
//
//	sum step  (eq. 2):  w ← w − γ Σ_{i∈batch} g_i        (the paper's; γ is per example)
//	mean step:          w ← w − (γ/B) Σ_{i∈batch} g_i    (frameworks' mean-reduced losses)
//	projection (eq. 3): w ← Π_{‖w‖≤R}(w)
//
// with indices drawn with replacement (the paper) or from shuffled epochs,
// all randomness from PCG streams of one seed (byte-identical histories).
// Each step's batch gives the unbiased M̂², Ĝ of gdiv.EstimateBatch
// (gdiv.EstimateBatchFinite for shuffled epochs), smoothed by
// gdiv.Estimator; with a gdiv.BatchSizePolicy the next batch is the
// policy's B = δ·B̂_S + 1 and the learning rate follows gdiv.ScaleLR.
// Lemma 1 — E‖w_{k+1} − w*‖² = ‖w_k − w*‖² − 2γB⟨∇F, w_k − w*⟩ +
// γ²(B·M² + B(B−1)·G) for the sum step — is verified exactly in the tests
// by enumerating every batch. SGDStep is one step on given indices;
// WriteHistoryCSV writes the per-step Records.
//
// # Conventions
//
// Those of package gdiv: misuse panics with a "gdiv: " message, bad data
// and parameters return errors wrapping gdiv's sentinels (ErrParam,
// ErrNonFinite, ...).
package train
