"""virtuoso_midi dataset: `virtuoso_midi_dataset_builder.Builder`.

Kept import-free on purpose: build workers import `processing` from this package, and must not
pay for tensorflow_datasets (or ever import jax).
"""
