"""Analytic training FLOPs per token (MaxText convention) and MFU.

Convention (MaxText `calculate_tflops_training_per_device`): every weight matmul costs
2 FLOPs per multiply-add forward and twice that backward, so weights count 6 x params-in-matmuls
per token (embedding lookups are free; the output head is a matmul). Causal attention
(q.k and p.v, 4 L D per token per layer forward) and the causal relative term
(q . Er^T, 2 L D per token per layer forward) are counted half, times 3 for fwd + bwd.
The original RGA (rga.py:original, L = 1024) comes to 86.1 MFLOP per token.
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


def forward_flops_per_token(model_config, seq_len: int) -> float:
  """Forward-only FLOPs per token (a third of the training count)."""
  return train_flops_per_token(model_config, seq_len) / 3.0


def mfu(tokens_per_second: float, flops_per_token: float, peak_flops_per_second: float) -> float:
  """Model FLOPs utilisation in [0, 1]: achieved model FLOP/s over the peak."""
  if peak_flops_per_second <= 0:
    raise ValueError(f"mfu: peak_flops_per_second must be > 0, got {peak_flops_per_second}")
  return tokens_per_second * flops_per_token / peak_flops_per_second
