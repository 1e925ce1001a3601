"""Training configs: `get_config(arg)` files; `default.py` is the one schema."""
