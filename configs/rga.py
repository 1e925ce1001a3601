"""Relative-global-attention (Music Transformer style) decoder configs.

Variants (`--config=configs/rga.py:VARIANT`):
  (none)    a 6 x 512 RGA on the embedded Bach chorales (token encoding).
  original  the original Optimus-VIRTUOSO RGA (GPT2RGA): 6 layers, width 512, 8 heads, MLP 512,
            1024 context, vocab 390, learned absolute positions plus one 1024 x 64 relative
            table per layer shared across heads, no head bias; Adam + Noam schedule, batch 4.
            Exactly 10,785,792 parameters. Architecture parity only: our token vocabulary is
            larger than 390, so train it with `--config.model.vocab_size=0`.
  tiny      CPU smoke tests and the README quickstart (about 10 minutes on 2 cores).
  long      8192-token context with blockwise relative attention (linear memory).
  pod       a TPU-pod example: FSDP over the hosts' chips, data parallel across slices.

  python -m virtuoso_jax.main --config=configs/rga.py:tiny --workdir=runs/rga_tiny
"""

from configs import default


def get_config(arg=None):
  config = default.get_config()
  config.model.name = "rga"
  variant = arg or "base"
  if variant == "base":
    pass
  elif variant == "original":
    m = config.model
    m.vocab_size = 390
    m.num_layers, m.num_heads, m.emb_dim, m.mlp_dim, m.max_len = 6, 8, 512, 512, 1024
    m.max_relative = 1024
    m.rel_per_head = False
    m.residual_attention_dropout = False
    m.head_bias = False
    config.batch_size = 4
    o = config.optim
    o.optimizer, o.schedule, o.warmup_steps = "adam", "noam", 4000
    o.b1, o.b2, o.eps, o.weight_decay, o.grad_clip_norm = 0.9, 0.98, 1e-8, 0.0, 0.0
  elif variant == "tiny":
    m = config.model
    m.num_layers, m.num_heads, m.emb_dim, m.mlp_dim, m.max_len = 2, 4, 128, 512, 256
    m.max_relative = 256
    m.dropout_rate = m.attention_dropout_rate = 0.0
    config.batch_size = 16
    config.num_train_steps = 600
    config.log_every_steps = 50
    config.eval_every_steps = 200
    config.num_eval_batches = 20
    config.optim.learning_rate = 2e-3
    config.optim.warmup_steps = 100
    config.ckpt.every_steps = 200
    config.sample.max_new_tokens = 512
  elif variant == "long":
    m = config.model
    m.max_len = m.max_relative = 8192
    m.rel_impl = "blockwise"
    m.remat = "block"
    config.batch_size = 8
  elif variant == "pod":
    # E.g. a v4-64 (32 chips, 8 hosts): run the same command on every worker (README, "TPU pod").
    m = config.model
    m.num_layers, m.num_heads, m.emb_dim, m.mlp_dim, m.max_len = 16, 16, 1024, 4096, 4096
    m.max_relative = 4096
    m.dtype = "bfloat16"
    m.remat = "block"
    config.data.tfds_config = "lakh_token"
    config.batch_size = 256
    config.num_train_steps = 200_000
    config.parallel.mesh_shape = (1, -1, 1)
    config.parallel.dcn_mesh_shape = (1, 1, 1)
    config.data.worker_count = 8
  else:
    raise ValueError(f"configs/rga.py: unknown variant {variant!r}; "
                     "expected one of: original, tiny, long, pod (or none)")
  return config
