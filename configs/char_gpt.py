"""Character-level GPT on the Optimus TXT encoding (the original's minGPT).

Variants (`--config=configs/char_gpt.py:VARIANT`):
  (none)    minGPT 6 x 512 on the embedded Bach chorales (char encoding).
  original  the original char minGPT: 6 layers, width 512, 8 heads, MLP 2048, context 512,
            dropout 0.1 (embeddings, attention, attention output, MLP); AdamW (0.9, 0.95),
            weight decay 0.1 on kernels, clip 1.0, constant lr 6e-4, batch 48.
  tiny      CPU smoke tests.
  long      4096-character context.
  pod       a TPU-pod example (FSDP), see rga.py:pod.
"""

from configs import default


def get_config(arg=None):
  config = default.get_config()
  config.model.name = "gpt"
  config.data.tfds_config = "bach_char"
  config.data.transpose_semitones = 0  # Text augmentation is not defined on chars.
  m = config.model
  m.num_layers, m.num_heads, m.emb_dim, m.mlp_dim, m.max_len = 6, 8, 512, 2048, 512
  variant = arg or "base"
  if variant == "base":
    pass
  elif variant == "original":
    m.residual_attention_dropout = True
    config.batch_size = 48
    o = config.optim
    o.optimizer, o.schedule, o.learning_rate = "adamw", "constant", 6e-4
    o.b1, o.b2, o.weight_decay, o.grad_clip_norm, o.warmup_steps = 0.9, 0.95, 0.1, 1.0, 0
  elif variant == "tiny":
    m.num_layers, m.num_heads, m.emb_dim, m.mlp_dim, m.max_len = 2, 4, 128, 512, 256
    m.dropout_rate = m.attention_dropout_rate = 0.0
    config.batch_size = 16
    config.num_train_steps = 600
    config.eval_every_steps = 200
    config.num_eval_batches = 20
    config.optim.learning_rate = 2e-3
    config.optim.warmup_steps = 100
    config.ckpt.every_steps = 200
    config.sample.max_new_tokens = 1024
  elif variant == "long":
    m.max_len = 4096
    m.remat = "block"
    config.batch_size = 8
  elif variant == "pod":
    m.num_layers, m.num_heads, m.emb_dim, m.mlp_dim, m.max_len = 16, 16, 1024, 4096, 4096
    m.dtype = "bfloat16"
    m.remat = "block"
    config.data.tfds_config = "lakh_char"
    config.batch_size = 256
    config.num_train_steps = 200_000
    config.data.worker_count = 8
  else:
    raise ValueError(f"configs/char_gpt.py: unknown variant {variant!r}; "
                     "expected one of: original, tiny, long, pod (or none)")
  return config
