"""Rules for layers of Hugging Face ``transformers``, registered when that
library is imported (gdiv never imports it; see ``_registry.LAZY_RULES``).

``transformers.pytorch_utils.Conv1D`` (GPT, GPT-2 and their relatives) is a
Linear with a transposed weight: y = x W + b with W of shape (in, out), on
inputs (B, in) or (B, T, in). Its per-example weight gradient Σ_t a_t g_tᵀ
is the transpose of Linear's, so it has the same norms (Frobenius norms do
not see a transpose) and the Linear rule serves it unchanged, its fast unit
total included (``_linear_rule``, ``_linear_total``)."""

from __future__ import annotations

from transformers.pytorch_utils import Conv1D

from ._registry import _RULES, register_norm_rule
from .linear import _linear_rule

if Conv1D not in _RULES:  # a rule the user registered first stays
    register_norm_rule(Conv1D)(_linear_rule)
