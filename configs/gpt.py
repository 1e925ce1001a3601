"""GPT (absolute positions only) decoder configs on token data.

Variants (`--config=configs/gpt.py:VARIANT`):
  (none)    a 6 x 512 GPT on the embedded Bach chorales (token encoding).
  original  GPT2RGA with relative attention switched off: the original RGA's size (6 x 512,
            8 heads, MLP 512, 1024 context, vocab 390, batch 4), for side-by-side comparison.
  tiny      CPU smoke tests.
  long      4096-token context.
  pod       a TPU-pod example (FSDP), see rga.py:pod.
"""

# Siblings are loaded by path, so this file loads from any working directory (and from a
# copy of the configs folder) without `configs` being an importable package.
from virtuoso_jax import config_lib

default = config_lib.load_sibling(__file__, "default")
variants = config_lib.load_sibling(__file__, "variants")


VARIANTS = {
    "base": lambda config: None,
    "original": variants.original_rga_size,
    "tiny": lambda config: variants.tiny(config, sample_tokens=512),
    "long": lambda config: variants.long(config, 4096),
    "pod": lambda config: variants.pod(config),
}


def get_config(arg=None):
  config = default.get_config()
  config.model.name = "gpt"
  return variants.apply(config, VARIANTS, arg, "configs/gpt.py")
