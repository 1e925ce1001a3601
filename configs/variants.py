"""Variant settings shared by rga.py, gpt.py and char_gpt.py (one place for each).

Each function changes values of a `default.get_config()` config in place; none adds a field.
"""


def set_shape(config, num_layers, num_heads, emb_dim, mlp_dim, max_len):
  m = config.model
  m.num_layers, m.num_heads, m.emb_dim, m.mlp_dim, m.max_len = (
      num_layers, num_heads, emb_dim, mlp_dim, max_len)


def original_rga_size(config):
  """GPT2RGA's size: 6 x 512, 8 heads, MLP 512, 1024 context, vocab 390; Adam + Noam, batch 4."""
  config.model.vocab_size = 390
  set_shape(config, 6, 8, 512, 512, 1024)
  config.model.residual_attention_dropout = False
  config.batch_size = 4
  o = config.optim
  o.optimizer, o.schedule, o.warmup_steps = "adam", "noam", 4000
  o.b1, o.b2, o.eps, o.weight_decay, o.grad_clip_norm = 0.9, 0.98, 1e-8, 0.0, 0.0


def tiny(config, sample_tokens: int):
  """CPU smoke tests and the quickstart: 2 x 128, 256 context, 600 steps."""
  set_shape(config, 2, 4, 128, 512, 256)
  m = config.model
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
  config.sample.max_new_tokens = sample_tokens


def bach(config):
  """The reference model: the best found for about one hour on a 2-core CPU on the embedded Bach
  chorales (bach_token). 4 x 256 with 512 context (a chorale is ~700 ids), dropout against the
  small corpus (305 training chorales), transposition augmentation. docs/benchmarks.md holds its
  measured figures and the command that reproduces them."""
  set_shape(config, 4, 8, 256, 1024, 512)
  config.model.max_relative = 512
  config.batch_size = 16
  config.num_train_steps = 1100  # ~1 hour at ~2,700 tokens/s on 2 cores.
  config.log_every_steps = 50
  config.eval_every_steps = 250
  config.num_eval_batches = 0  # The whole validation split: 24 chorales, a few seconds.
  o = config.optim
  o.learning_rate, o.warmup_steps = 1e-3, 100
  config.ckpt.every_steps = 250
  config.sample.top_p = 0.95  # Chosen with the evaluate binary (docs/benchmarks.md).


def control(config):
  """The reference model trained beyond continuation (virtuoso_jax/tasks.py): 45 % of the
  windows become span infilling, 5 % accompaniment, 80 % carry an attribute prefix (4 bins per
  attribute, fitted to the corpus); the latest token codec (version 5). Same size and steps as
  `bach`, so the two compare on continuation NLL (docs/benchmarks.md has both runs). Infill is
  the larger share because its controls are visible only in the span's last seconds, an
  accompaniment's everywhere: with fewer infill examples the model read an infill's right
  context as an accompaniment's given melody (docs/benchmarks.md)."""
  bach(config)
  d = config.data
  d.infill_rate, d.accompany_rate, d.attribute_rate = 0.45, 0.05, 0.8
  # The position before each run of control groups predicts the first id after the run (the
  # sampler's draw there: a note before the kept music, or the WAIT that closes the span),
  # not the positions between groups (docs/benchmarks.md, control_f).
  d.lookahead_targets, d.lookahead_entries = True, "first"


def long(config, max_len: int):
  """Long context with per-block rematerialisation. The global batch of 8 is kept on any
  machine: the memory pre-flight picks the gradient accumulation that fits
  (memory.auto_grad_accum, on by default; on a 24 GiB CPU host 2 micro-batches of 4)."""
  config.model.max_len = max_len
  config.model.remat = "block"
  config.batch_size = 8


def pod(config):
  """A TPU-pod example (e.g. v4-64: 32 chips, 8 hosts): 16 x 1024 in bfloat16, FSDP."""
  set_shape(config, 16, 16, 1024, 4096, 4096)
  m = config.model
  m.max_relative = 4096
  m.dtype = "bfloat16"
  m.remat = "block"
  config.data.source = "lakh"  # The encoding stays the file's own.
  config.batch_size = 256
  config.num_train_steps = 200_000
  config.parallel.mesh_shape = (1, -1, 1)
  config.parallel.dcn_mesh_shape = (1, 1, 1)
  config.data.worker_count = 8
  config.memory.machine = "accelerators (a TPU pod slice such as v4-64, or GPUs), not a CPU"


def apply(config, table, variant, path: str):
  """Applies `table[variant]` (a function of the config; "base" when no variant is named) to
  `config` and returns it; an unknown variant is a ValueError naming the file and its variants."""
  name = variant or "base"
  if name not in table:
    raise ValueError(f"{path}: unknown variant {name!r}; expected one of: "
                     f"{', '.join(k for k in table if k != 'base')} (or none)")
  table[name](config)
  return config
