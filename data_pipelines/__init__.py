"""TFDS dataset builders of virtuoso_jax (one folder per dataset, the layout `tfds new` makes)."""
