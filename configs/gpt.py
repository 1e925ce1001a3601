"""GPT (absolute positions only) decoder configs on token data.

Variants (`--config=configs/gpt.py:VARIANT`):
  (none)    a 6 x 512 GPT on the embedded Bach chorales (token encoding).
  original  GPT2RGA with relative attention switched off: the original RGA's size (6 x 512,
            8 heads, MLP 512, 1024 context, vocab 390, batch 4), for side-by-side comparison.
  tiny      CPU smoke tests.
  long      4096-token context.
  pod       a TPU-pod example (FSDP), see rga.py:pod.
"""

from configs import default


def get_config(arg=None):
  config = default.get_config()
  config.model.name = "gpt"
  variant = arg or "base"
  if variant == "base":
    pass
  elif variant == "original":
    m = config.model
    m.vocab_size = 390
    m.num_layers, m.num_heads, m.emb_dim, m.mlp_dim, m.max_len = 6, 8, 512, 512, 1024
    m.residual_attention_dropout = False
    config.batch_size = 4
    o = config.optim
    o.optimizer, o.schedule, o.warmup_steps = "adam", "noam", 4000
    o.b1, o.b2, o.eps, o.weight_decay, o.grad_clip_norm = 0.9, 0.98, 1e-8, 0.0, 0.0
  elif variant == "tiny":
    m = config.model
    m.num_layers, m.num_heads, m.emb_dim, m.mlp_dim, m.max_len = 2, 4, 128, 512, 256
    m.dropout_rate = m.attention_dropout_rate = 0.0
    config.batch_size = 16
    config.num_train_steps = 600
    config.eval_every_steps = 200
    config.num_eval_batches = 20
    config.optim.learning_rate = 2e-3
    config.optim.warmup_steps = 100
    config.ckpt.every_steps = 200
    config.sample.max_new_tokens = 512
  elif variant == "long":
    m = config.model
    m.max_len = 4096
    m.remat = "block"
    config.batch_size = 8
  elif variant == "pod":
    m = config.model
    m.num_layers, m.num_heads, m.emb_dim, m.mlp_dim, m.max_len = 16, 16, 1024, 4096, 4096
    m.dtype = "bfloat16"
    m.remat = "block"
    config.data.tfds_config = "lakh_token"
    config.batch_size = 256
    config.num_train_steps = 200_000
    config.data.worker_count = 8
  else:
    raise ValueError(f"configs/gpt.py: unknown variant {variant!r}; "
                     "expected one of: original, tiny, long, pod (or none)")
  return config
