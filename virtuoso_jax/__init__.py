"""virtuoso_jax: JAX/Flax training stack for symbolic-music language models.

Importing the package is cheap and changes nothing in the process: no jax, flax or note-seq at
import time, no XLA flags, no malloc settings, no logger filters (the binaries set what they
need: `virtuoso_jax.runtime`). Sub-packages:

- `virtuoso_jax.encoding`: MIDI <-> notes <-> ids (pure Python + numpy, no jax).
- `virtuoso_jax.models`: GPT and RGA decoders in Flax NNX (logical axis names only).
- `input_pipeline`, `sharding`, `checkpointing`, `preflight`, `train`, `main`: training.
- `sampling`, `sample`, `compose`: generation; `evaluation`, `evaluate`: measuring the music.
"""

__version__ = "0.1.0"
