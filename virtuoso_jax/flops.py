"""Analytic training FLOPs per token (MaxText convention) and MFU.

Convention (MaxText `calculate_tflops_training_per_device`), per token of a sequence of length L,
D = emb_dim, F = mlp_dim, V = vocab_size, n = num_layers:

  train_flops_per_token = 6 * N_matmul                   (weights: 2 fwd + 4 bwd per MAC)
                        + n * 6 * L * D                   (attention, causal: half counted)
                        + n * 3 * L * D   (rga only)      (relative term, causal: half counted)

  N_matmul = n * (4 D^2 + 2 D F) + D V   (fused qkv 3D^2, output projection D^2, MLP 2DF, the
             output head DV whether tied or not; embedding lookups, LayerNorms, biases, softmax
             and the optimizer are free).
  Attention: q.k^T and p.v are 2 x 2 L D FLOPs per token per layer forward, halved for the causal
  mask (2 L D), x3 for forward + backward. Relative term q.Er^T: 2 L D forward, halved, x3.

rga.py:original (n=6, D=512, F=512, V=390, L=1024): 57,821,184 + 18,874,368 + 9,437,184
= 86,132,736 FLOPs per token (the "86 MFLOP/token" of the issue). Implementations may execute more
(dense attention computes the full L x L square) or less; MFU counts only these model FLOPs.
"""

from __future__ import annotations


def _matmul_params(model_config) -> int:
  d, f, v = model_config.emb_dim, model_config.mlp_dim, model_config.vocab_size
  per_layer = 3 * d * d + d * d + 2 * d * f  # fused qkv, output projection, MLP
  return model_config.num_layers * per_layer + d * v  # + output head (tied or not)


def train_flops_per_token(model_config, seq_len: int) -> float:
  """Training FLOPs (forward + backward) per token at sequence length `seq_len`."""
  if model_config.vocab_size <= 0:
    raise ValueError("train_flops_per_token: model.vocab_size must be resolved (> 0)")
  d, n = model_config.emb_dim, model_config.num_layers
  weights = 6.0 * _matmul_params(model_config)
  attention = 3.0 * n * (4.0 * seq_len * d) / 2.0
  relative = 0.0
  if model_config.name == "rga":
    relative = 3.0 * n * (2.0 * seq_len * d) / 2.0
  return weights + attention + relative


def mfu(tokens_per_second: float, flops_per_token: float, peak_flops_per_second: float) -> float:
  """Model FLOPs utilisation in [0, 1]: achieved model FLOP/s over the peak."""
  if peak_flops_per_second <= 0:
    raise ValueError(f"mfu: peak_flops_per_second must be > 0, got {peak_flops_per_second}")
  return tokens_per_second * flops_per_token / peak_flops_per_second
