"""The one config schema of virtuoso_jax. Every other config file starts from `get_config()` here.

Run:  python -m virtuoso_jax.main --config=configs/default.py --workdir=runs/default
Any field can be overridden on the command line, e.g. `--config.model.num_layers=12`.

Variant files (`rga.py`, `gpt.py`, `char_gpt.py`) take an argument after a colon:
`--config=configs/rga.py:tiny`. They may only change values; they never add fields, so this file
is the complete list of what can be set.
"""

import ml_collections


def get_config(arg=None):
  del arg  # The schema has no variants; see rga.py / gpt.py / char_gpt.py.
  config = ml_collections.ConfigDict()

  config.seed = 0  # Parameter init, dropout and data-shuffle seed (the whole run is reproducible).

  # ---------------------------------------------------------------- model
  m = config.model = ml_collections.ConfigDict()
  m.name = "rga"  # "rga" (relative global attention, Music Transformer) or "gpt".
  m.vocab_size = 0  # 0: take it from the dataset's codec. A positive value must be >= that.
  m.num_layers = 6
  m.num_heads = 8
  m.emb_dim = 512
  m.mlp_dim = 2048
  m.max_len = 1024  # Context length in tokens (training window L; the sampler slides past it).
  m.dropout_rate = 0.1  # Embedding and MLP-output dropout.
  m.attention_dropout_rate = 0.1  # Dropout on attention probabilities.
  m.residual_attention_dropout = True  # Dropout on the attention output too (minGPT); RGA original: False.
  m.pos_emb = "learned"  # "learned" (initialised to zero, as the original) or "none".
  m.tie_embeddings = False  # Share the token embedding with the output head.
  m.use_bias = True  # Biases in attention and MLP projections.
  m.head_bias = False  # Bias in the output head (the original has none).
  m.layer_norm_eps = 1e-5  # torch default, for parity with the original.
  # RGA only.
  m.max_relative = 1024  # Learned relative embeddings cover distances 0..max_relative-1 (clipped beyond).
  m.rel_per_head = False  # False: one table per layer shared across heads (the original).
  m.rel_impl = "auto"  # "auto" | "naive" (tests only) | "skew" | "blockwise".
  m.attn_block_size = 512  # Key/query block for "blockwise" attention.
  # Numerics and memory.
  m.dtype = "auto"  # Compute dtype: "auto" = float32 on CPU, bfloat16 on GPU/TPU; or explicit.
  m.param_dtype = "float32"  # Master weights.
  m.remat = "none"  # "none" | "block": rematerialise each block in the backward pass.

  # ---------------------------------------------------------------- data
  d = config.data = ml_collections.ConfigDict()
  d.tfds_name = "virtuoso_midi"
  # Where the music comes from: a built-in source ("bach": embedded, no network; "tegridy",
  # "maestro", "lakh": downloaded) or "manual" (your own MIDI folder, data.manual_dir).
  d.source = "bach"
  d.encoding = "token"  # "token" (ids) or "char" (Optimus TXT). The TFDS builder config is
  # "{source}_{encoding}", or "{encoding}" for "manual" (virtuoso_jax.dataset.builder_config).
  d.data_dir = ""  # "" = $TFDS_DATA_DIR or ~/tensorflow_datasets.
  d.manual_dir = ""  # For source "manual": the folder of MIDI files to prepare if needed.
  d.prepare_if_missing = True  # Prepare the dataset on first use (the embedded default needs no network).
  d.train_split = "train"
  d.eval_split = "validation"
  d.windowing = "window"  # "window": windows of L+1 tokens inside one song; "pack": songs packed.
  d.transpose_semitones = 6  # Train-time augmentation: uniform shift in [-n, n]; drums untouched. 0 = off.
  # Beyond continuation (token encoding; virtuoso_jax/tasks.py): shares of training windows
  # turned into span infilling and accompaniment (control notes anticipated anticipation_ms
  # ahead), and of windows given an attribute prefix (density, polyphony, pitch range,
  # instruments; the task). Any rate > 0 trains with token codec version 3 (a larger vocabulary).
  d.infill_rate = 0.0
  d.accompany_rate = 0.0
  d.attribute_rate = 0.0
  d.anticipation_ms = 2000
  # The position before a control group predicts the first id after the groups (the sampler's
  # draw there decides whether a note comes before the control), instead of being left out of
  # the loss (tasks.lookahead_targets). Off here; rga.py:control trains it at each run's
  # first group ("first"): at "all" positions or the "closing" run only, spans closed early
  # (docs/benchmarks.md, "Where a control enters" and "Which positions predict").
  d.lookahead_targets = False
  # With lookahead_targets, the positions that predict past the groups: "all" (before and
  # between the groups of every run), "closing" (only the run an infill's closing WAIT
  # follows: the decision to end the span), "first" (before each run's first group only).
  d.lookahead_entries = "all"
  # Bins per numeric attribute (density, polyphony, pitch range), their edges fitted to the
  # training corpus (quantiles) when a run starts and kept in its encoding.json. 0: the generic
  # corpus-blind edges of the first version-2 runs (8 bins).
  d.attribute_bins = 4
  d.worker_count = 0  # grain worker processes (0 = in the main process).
  d.prefetch = 2  # Batches prefetched ahead of the train step.

  # ---------------------------------------------------------------- training
  config.batch_size = 32  # Global batch, in sequences, across all devices and hosts.
  config.grad_accum_steps = 1  # Micro-batches per optimizer step (batch_size must divide by it).
  config.num_train_steps = 10_000
  # Memory pre-flight (virtuoso_jax/preflight.py): after compiling, the train and eval steps'
  # memory (XLA's estimate) is compared with what is free (host RAM on CPU, device memory on
  # GPU/TPU) before the first step.
  mem = config.memory = ml_collections.ConfigDict()
  mem.check = "refuse"  # "refuse": stop with settings that fit; "warn": run anyway; "off".
  # The smallest grad_accum_steps (>= the set one) whose step fits; batch_size stays global.
  # False: the set grad_accum_steps only (a step that cannot fit is refused, as memory.check says).
  mem.auto_grad_accum = True
  mem.limit_mib = 0  # At most this much (MiB: per process on CPU, per device else); 0 = all free.
  mem.machine = ""  # The machine class a config is meant for, e.g. "a TPU pod" (said on a CPU).
  config.log_every_steps = 50
  config.eval_every_steps = 500
  config.num_eval_batches = 0  # 0 = the whole eval split (deterministic); n > 0 caps it.

  o = config.optim = ml_collections.ConfigDict()
  o.optimizer = "adamw"  # "adamw" or "adam" (the original RGA: Adam, no decay).
  o.learning_rate = 3e-4  # Peak learning rate (ignored by "noam", which has its own scale).
  o.schedule = "cosine"  # "cosine" (warmup + cosine), "constant", or "noam" (the original RGA).
  o.warmup_steps = 500
  o.min_lr_ratio = 0.1  # Cosine floor as a fraction of the peak.
  o.b1 = 0.9
  o.b2 = 0.95
  o.eps = 1e-8
  o.weight_decay = 0.1  # Decoupled, on kernels only (not biases, norms, embeddings).
  o.grad_clip_norm = 1.0  # Global-norm clipping; 0 = off.

  # ---------------------------------------------------------------- parallelism
  p = config.parallel = ml_collections.ConfigDict()
  p.mesh_axes = ("data", "fsdp", "tensor")
  p.mesh_shape = (1, -1, 1)  # Within a slice/host group; one -1 is filled with the remaining devices.
  p.dcn_mesh_shape = (1, 1, 1)  # Across slices (multi-slice TPU); data parallel is recommended here.
  # Logical axis -> mesh axes. Parameters name logical axes only; this maps them.
  p.logical_axis_rules = (
      ("batch", ("data", "fsdp")),
      ("embed", "fsdp"),
      ("mlp", "tensor"),
      ("heads", "tensor"),
      ("kv", None),
      ("vocab", "tensor"),
      ("length", None),
      ("relative", None),
  )

  # ---------------------------------------------------------------- checkpoints
  c = config.ckpt = ml_collections.ConfigDict()
  c.enabled = True
  c.every_steps = 500
  c.keep = 3  # Latest N kept.
  c.keep_best = True  # Also keep the best checkpoint by eval loss.
  c.async_save = True
  # Another run's workdir: start THIS (new) run from that run's latest parameters, with a fresh
  # optimizer state and step 0. Shapes must match. Ignored once this workdir has checkpoints.
  c.fine_tune_from = ""
  # True: start a new run in a workdir that holds a run of an incompatible config (one a resume
  # refuses); the old run is moved (never deleted) to `<workdir>.old-<timestamp>`. A compatible
  # run resumes as usual, so rerunning the same command continues the new run.
  c.overwrite = False

  # ---------------------------------------------------------------- sampling (after training / sample binary)
  s = config.sample = ml_collections.ConfigDict()
  s.num_samples = 1
  s.max_new_tokens = 1024
  s.temperature = 1.0
  s.top_k = 0  # 0 = off.
  s.top_p = 1.0  # 1.0 = off.
  s.write_at_end = True  # Write a sample (MIDI + PNG) to <workdir>/samples when training ends.
  s.every_steps = 0  # > 0: also every N steps, to <workdir>/samples/step_N (one process only).

  # ---------------------------------------------------------------- performance reporting
  f = config.perf = ml_collections.ConfigDict()
  # MFU denominator: peak FLOP/s of all devices together. 0 = the device kind's spec-sheet bf16
  # peak (GPU/TPU), or on CPU a matmul peak measured once per machine and cached.
  f.peak_flops = 0.0

  config.tensorboard = True  # Also write TensorBoard event files (tensorboardX; no TensorFlow).
  return config
