"""virtuoso_jax: JAX/Flax training stack for symbolic-music language models.

Importing the package is cheap: no jax, flax or note-seq at import time. Sub-packages:

- `virtuoso_jax.encoding`: MIDI <-> notes <-> ids (pure Python + numpy, no jax).
- `virtuoso_jax.models`: GPT and RGA decoders in Flax NNX (logical axis names only).
- `input_pipeline`, `sharding`, `checkpointing`, `train`, `main`: training.
- `sampling`, `sample`, `compose`: generation.
"""

__version__ = "0.1.0"
