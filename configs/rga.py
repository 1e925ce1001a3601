"""Relative-global-attention (Music Transformer style) decoder configs.

Variants (`--config=configs/rga.py:VARIANT`):
  (none)    a 6 x 512 RGA on the embedded Bach chorales (token encoding).
  original  the original Optimus-VIRTUOSO RGA (GPT2RGA): 6 layers, width 512, 8 heads, MLP 512,
            1024 context, vocab 390, learned absolute positions plus one 1024 x 64 relative
            table per layer shared across heads, no head bias; Adam + Noam schedule, batch 4.
            Exactly 10,785,792 parameters. Architecture parity only: our token vocabulary is
            larger than 390, so train it with `--config.model.vocab_size=0`.
  tiny      CPU smoke tests and the README quickstart (a few minutes on 2 cores).
  bach      the reference model: about one hour on a 2-core CPU on the Bach chorales, with the
            figures in docs/benchmarks.md (held-out bits per second, music statistics).
  control   `bach` trained beyond continuation: span infilling, accompaniment and attribute
            prefixes mixed in (token codec version 3; virtuoso_jax/tasks.py).
  long      8192-token context with blockwise relative attention (linear memory).
  pod       a TPU-pod example: FSDP over the hosts' chips, data parallel across slices.

  python -m virtuoso_jax.main --config=configs/rga.py:tiny --workdir=runs/rga_tiny
"""

# Siblings are loaded by path, so this file loads from any working directory (and from a
# copy of the configs folder) without `configs` being an importable package.
from virtuoso_jax import config_lib

default = config_lib.load_sibling(__file__, "default")
variants = config_lib.load_sibling(__file__, "variants")


def _original(config):
  variants.original_rga_size(config)
  m = config.model
  m.max_relative, m.rel_per_head, m.head_bias = 1024, False, False


def _long(config):
  variants.long(config, 8192)
  config.model.max_relative = 8192
  config.model.rel_impl = "blockwise"


VARIANTS = {
    "base": lambda config: None,
    "original": _original,
    "tiny": lambda config: variants.tiny(config, sample_tokens=512),
    "bach": variants.bach,
    "control": variants.control,
    "long": _long,
    "pod": lambda config: variants.pod(config),
}


def get_config(arg=None):
  config = default.get_config()
  config.model.name = "rga"
  return variants.apply(config, VARIANTS, arg, "configs/rga.py")
