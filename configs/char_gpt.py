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

# Siblings are loaded by path, so this file loads from any working directory (and from a
# copy of the configs folder) without `configs` being an importable package.
from virtuoso_jax import config_lib

default = config_lib.load_sibling(__file__, "default")
variants = config_lib.load_sibling(__file__, "variants")


def _original(config):
  config.model.residual_attention_dropout = True
  config.batch_size = 48
  o = config.optim
  o.optimizer, o.schedule, o.learning_rate = "adamw", "constant", 6e-4
  o.b1, o.b2, o.weight_decay, o.grad_clip_norm, o.warmup_steps = 0.9, 0.95, 0.1, 1.0, 0


VARIANTS = {
    "base": lambda config: None,
    "original": _original,
    "tiny": lambda config: variants.tiny(config, sample_tokens=1024),
    "long": lambda config: variants.long(config, 4096),
    "pod": lambda config: variants.pod(config),
}


def get_config(arg=None):
  config = default.get_config()
  config.model.name = "gpt"
  config.data.encoding = "char"
  config.data.transpose_semitones = 0  # Text augmentation is not defined on chars.
  variants.set_shape(config, 6, 8, 512, 2048, 512)
  return variants.apply(config, VARIANTS, arg, "configs/char_gpt.py")
