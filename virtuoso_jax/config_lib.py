"""Config helpers: load a `configs/*.py[:variant]` file, validate it, resolve derived values.

`configs/default.py` is the one schema; this module only checks and interprets it. It imports no
jax, so configs can be validated anywhere (tests, tools, before the backend starts).
"""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import re
import sys
import traceback
from typing import Any, Iterable, Sequence

from absl import flags
import ml_collections
from ml_collections import config_flags

from virtuoso_jax import paths

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]

_OPTIMIZERS = ("adamw", "adam")
_SCHEDULES = ("cosine", "constant", "noam")
_WINDOWING = ("window", "pack")
_LOOKAHEAD_ENTRIES = ("all", "closing", "first")  # data.lookahead_entries (tasks.TaskRates).
_DTYPES = ("auto", "float32", "bfloat16", "float16")
# The model options (config.model fields with a fixed set of values): the one list, checked by
# `validate` and by the model itself (models.transformer.Decoder), whoever builds it.
MODEL_OPTIONS = {
    "name": ("rga", "gpt"),
    "rel_impl": ("auto", "naive", "skew", "blockwise"),
    "remat": ("none", "block"),
    "pos_emb": ("learned", "none"),
    "dtype": _DTYPES,
    "param_dtype": _DTYPES[1:],
}
_ENCODINGS = ("token", "char")  # virtuoso_jax.encoding.KINDS (this module imports no codec).
_MANUAL_SOURCE = "manual"  # virtuoso_jax.dataset.MANUAL_SOURCE: the user's own folder.
# The config flag's name: `--config=file.py[:variant]` and its `--config.a.b=value` overrides.
_FLAG = "config"


class ConfigError(ValueError):
  """A config value is invalid; the message names the field, the value and the reason."""


def load_config(spec: str, overrides: Iterable[str] | dict[str, Any] = ()) -> ml_collections.ConfigDict:
  """Loads `path/to/file.py[:variant]` and applies overrides exactly as the training binary's
  `--config=` and `--config.a.b=value` flags do (`load_config_argv`).

  Args:
    spec: a config file path (relative to the CWD, else to the repo root), optionally followed
      by `:variant`.
    overrides: `"model.num_layers=2"` strings, each read as `--config.model.num_layers=2` on the
      command line (the value parsed by the field's type: int, float, bool, tuple, str), or a
      {dotted_name: value} dict, whose values are passed the same way as `str(value)`.

  Returns:
    The (unlocked) ConfigDict. ConfigError names what is wrong (file, variant, field, value).
  """
  if isinstance(overrides, dict):
    args = [f"--{_FLAG}.{k}={v}" for k, v in overrides.items()]
  else:
    args = [f"--{_FLAG}.{o}" for o in overrides]
  config, _ = load_config_argv(["load_config", f"--{_FLAG}={spec}", *args])
  return config


def load_config_argv(argv: Sequence[str]) -> tuple[ml_collections.ConfigDict | None, list[str]]:
  """The config that `--config=file.py[:variant]` and the `--config.a.b=value` overrides in a
  command line make, parsed by ml_collections as the binary's config flag parses them.

  The one loader of config files: `load_config` calls it, and `python -m virtuoso_jax.main`
  calls it before absl parses its flags, so a file or override that cannot load is one
  ConfigError (the binary prints it as one `error:` line) instead of a traceback from inside
  flag parsing. Other flags in `argv` are ignored.

  Two steps, each with ml_collections' own parsing: the file through `DEFINE_config_file`
  (an error here is the file's), then the overrides through `DEFINE_config_dict` on the loaded
  config (an error here is an override's). Each on a private `flags.FlagValues`.

  Args:
    argv: a command line, program name first.

  Returns:
    (config, argv with the config path made absolute): the path is resolved relative to the
    CWD, else to the repository root, so a config given relative to the repository loads from
    any directory. (None, argv) when `argv` has no `--config` (absl then reports it missing).
  """
  try:
    argv = flags.FlagValues().read_flags_from_files(list(argv), force_gnu=False)
  except flags.Error:
    return None, list(argv)  # An unreadable --flagfile: absl's own parse reports it.
  # absl parses no flag after `--`.
  flag_args = argv[:argv.index("--")] if "--" in argv else argv
  where = [i for i, a in enumerate(flag_args) if i > 0 and re.match(rf"^--?{_FLAG}(=|$)", a)]
  if not where:
    return None, argv
  if len(where) > 1:
    raise ConfigError(f"--{_FLAG} is given {len(where)} times; give one config file")
  i = where[0]
  if "=" in argv[i]:
    index, spec = i, argv[i].split("=", 1)[1]
  elif i + 1 < len(flag_args):
    index, spec = i + 1, argv[i + 1]
  else:
    raise ConfigError(f"--{_FLAG} needs a value, e.g. --{_FLAG}=configs/rga.py:tiny")
  early = [a for a in flag_args[1:i] if _is_override(a)]
  if early:
    raise ConfigError(f"{early[0].split('=', 1)[0]} comes before --{_FLAG}=...: give the config "
                      "file first, then its overrides")
  file, arg = resolve_config_spec(spec)
  resolved = str(file) + (f":{arg}" if ":" in spec else "")
  argv = list(argv)
  argv[index] = resolved if index != i else f"{argv[i].split('=', 1)[0]}={resolved}"
  config = _load_file(file, arg, resolved)
  # The overrides with the values they consume (`--config.a.b value` is two arguments); the
  # config file argument is left out, so the inline flag below parses the overrides only.
  rest = [a for j, a in enumerate(argv[:len(flag_args)]) if j not in (i, index)]
  _apply_overrides(config, rest)
  return config, argv


def _is_override(arg: str) -> bool:
  return re.match(rf"^--?(no)?{_FLAG}\.", arg) is not None


def _load_file(file: pathlib.Path, arg: str, resolved: str) -> ml_collections.ConfigDict:
  """`file`'s get_config(arg), loaded by ml_collections' config-file flag."""
  fv = flags.FlagValues()
  argv = ["load_config", f"--{_FLAG}={resolved}"]
  holder = config_flags.DEFINE_config_file(_FLAG, None, flag_values=fv, lock_config=False,
                                           sys_argv=argv)
  variant = f" variant {arg!r}" if arg else ""
  # ml_collections loads the file as module `config_config`, executing it into the module of
  # that name if one is loaded: names of a file loaded before (its get_config) would survive.
  sys.modules.pop(f"{_FLAG}_config", None)
  try:
    fv(argv)
    config = holder.value
    # A file ml_collections could not read (an OSError while loading it or in get_config()) is
    # handed back as a stand-in that raises that error on any attribute access.
    hasattr(config, "lock")
  except Exception as e:  # pylint: disable=broad-except  (running the user's file: any error is its)
    raise _file_error(e, file, variant) from e
  if not isinstance(config, ml_collections.ConfigDict):
    raise ConfigError(f"config file {file}: get_config() returned {type(config).__name__}, "
                      "not an ml_collections.ConfigDict")
  return config


def _file_error(e: Exception, file: pathlib.Path, variant: str) -> ConfigError:
  """ConfigError for what loading `file` raised. ml_collections and absl re-raise a
  TypeError/ValueError wrapped (with a traceback in the message), so the message is taken from
  the first exception in the chain raised through the file itself, else (e.g. get_config()
  called with the wrong arguments) from the innermost one."""
  chain, x = [], e
  while x is not None and len(chain) < 10:
    chain.append(x)
    x = x.__cause__ or x.__context__
  own = [x for x in chain if isinstance(x, SyntaxError) or
         any(f.filename == str(file) for f in traceback.extract_tb(x.__traceback__))]
  x = own[0] if own else chain[-1]
  if isinstance(x, ConfigError):
    return x  # A config_lib helper's own message (e.g. a sibling file that is missing).
  if isinstance(x, SyntaxError):
    return ConfigError(f"config file {x.filename or file} has a syntax error at line {x.lineno}: "
                       f"{x.msg}")
  if isinstance(x, AttributeError) and x.name == "get_config" and not own:
    return ConfigError(f"config file {file} defines no get_config(arg) function")
  return ConfigError(f"config file {file} failed to load{variant}: {type(x).__name__}: "
                     f"{_one_line(x)}")


def _apply_overrides(config: ml_collections.ConfigDict, argv: list[str]) -> None:
  """Applies the `--config.a.b=value` flags of `argv` (program name first) to `config` in
  place, by ml_collections' override flags: each value parsed by its field's type."""
  names = [a.split("=", 1)[0] for a in argv[1:] if _is_override(a)]
  if not names:
    return
  fv = flags.FlagValues()
  try:
    config_flags.DEFINE_config_dict(_FLAG, config, flag_values=fv, lock_config=False,
                                    sys_argv=argv)
    fv(argv, known_only=True)
  except (AttributeError, KeyError) as e:  # config_path: a field the config does not have.
    reason = _one_line(e)
    key = re.match(r"'([^']+)'", reason)
    named = [n for n in names if key and key.group(1) in n.split(".")] or names
    raise ConfigError(f"bad config override ({', '.join(named)}): no such key {reason}") from None
  except flags.IllegalFlagValueError as e:  # A value its field's parser rejects.
    flag, _, reason = str(e).removeprefix("flag ").partition(": ")
    path = flag.split("=", 1)[0].split(".", 1)[-1]
    raise ConfigError(f"bad config override ({flag}): {path} is {_type_of(config, path)}; "
                      f"{_one_line(reason)}") from None
  except (flags.Error, TypeError, ValueError) as e:
    raise ConfigError(f"bad config override ({', '.join(names)}): {_one_line(e)}") from None


def _type_of(config: ml_collections.ConfigDict, path: str) -> str:
  """'an int', 'a tuple', ... of the field at dotted `path` (for messages)."""
  node = config
  for part in path.split("."):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      return "a field"
    node = node[part]
  name = type(node).__name__
  return f"{'an' if name[0] in 'aeiou' else 'a'} {name}"


def _one_line(e: BaseException | str) -> str:
  """An exception's message on one line (a KeyError's own text, not its repr)."""
  while isinstance(e, BaseException) and len(e.args) == 1 and isinstance(e.args[0], BaseException):
    e = e.args[0]
  if isinstance(e, KeyError) and len(e.args) == 1 and isinstance(e.args[0], str):
    e = e.args[0]
  return " ".join(str(e).split())


def resolve_config_spec(spec: str) -> tuple[pathlib.Path, str]:
  """(absolute config file, variant) of `path/to/file.py[:variant]`: the path relative to the
  CWD, else to the repository root. ConfigError if there is no such file."""
  path, _, arg = spec.partition(":")
  if not path:
    raise ConfigError(f"--config={spec!r}: give a config file, e.g. configs/rga.py:tiny")
  file = pathlib.Path(path).expanduser()
  if not file.is_file() and not file.is_absolute():
    file = REPO_ROOT / path
  if not file.is_file():
    where = (f"{os.getcwd()} and {REPO_ROOT}" if not pathlib.Path(path).is_absolute() else
             "that path")
    raise ConfigError(f"config file {path!r} not found (looked in {where})")
  return file.resolve(), arg


def load_sibling(config_file: str, name: str):
  """The config module `name` next to `config_file` (a config file's `__file__`), loaded by
  path: config files import their siblings this way (`default = config_lib.load_sibling(
  __file__, "default")`), so they load from any working directory and from a copied folder of
  configs, whether or not the `configs` folder is importable. One module object per file."""
  file = pathlib.Path(config_file).resolve().parent / f"{name}.py"
  key = f"_virtuoso_config_sibling_{abs(hash(str(file))):x}_{name}"
  if key not in sys.modules:
    module_spec = importlib.util.spec_from_file_location(key, file)
    if module_spec is None or not file.is_file():
      raise ConfigError(f"{config_file} imports {name}.py, which is not in {file.parent}")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    sys.modules[key] = module
  return sys.modules[key]


def upgrade(saved: dict[str, Any]) -> dict[str, Any]:
  """A run's saved config.json (a dict) in today's schema: runs written before data.source and
  data.encoding were fields name both in `data.tfds_config` ("bach_token"; "token"/"char" for
  a user's folder, now source "manual"); runs written before data.attribute_bins used the
  generic attribute edges (0). Returns `saved` itself when there is nothing to do."""
  data = saved.get("data")
  if not isinstance(data, dict) or ("tfds_config" not in data and "attribute_bins" in data):
    return saved
  data = dict(data)
  if "tfds_config" in data:
    name = str(data.pop("tfds_config"))
    source, _, kind = name.rpartition("_")
    data.setdefault("source", source or "manual")
    data.setdefault("encoding", kind)
  # Version-2 runs saved before attribute bins were fitted used the generic edges.
  data.setdefault("attribute_bins", 0)
  return dict(saved, data=data)


def _check(cond: bool, field: str, value: Any, reason: str) -> None:
  if not cond:
    raise ConfigError(f"config.{field}={value!r}: {reason}")


def check_model_options(model_config) -> None:
  """ConfigError naming the first config.model field whose value is not one of MODEL_OPTIONS."""
  for field, allowed in MODEL_OPTIONS.items():
    value = model_config[field]
    _check(value in allowed, f"model.{field}", value, f"expected one of {allowed}")


def validate(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Checks every field of the schema; raises ConfigError naming the field and the reason.

  Returns the config unchanged, so `config = validate(load_config(...))` reads naturally.
  """
  m, d, o, p, c = config.model, config.data, config.optim, config.parallel, config.ckpt
  check_model_options(m)
  _check(isinstance(m.vocab_size, int) and m.vocab_size >= 0, "model.vocab_size", m.vocab_size,
         "must be 0 (from the dataset's codec) or a positive int")
  for f in ("num_layers", "num_heads", "emb_dim", "mlp_dim", "max_len", "max_relative"):
    v = m[f]
    _check(isinstance(v, int) and v > 0, f"model.{f}", v, "must be a positive int")
  _check(m.emb_dim % m.num_heads == 0, "model.emb_dim", m.emb_dim,
         f"must be divisible by model.num_heads={m.num_heads}")
  for f in ("dropout_rate", "attention_dropout_rate"):
    _check(0.0 <= m[f] < 1.0, f"model.{f}", m[f], "must be in [0, 1)")
  _check(m.attn_block_size > 0, "model.attn_block_size", m.attn_block_size, "must be positive")

  _check(bool(d.tfds_name), "data.tfds_name", d.tfds_name, "must not be empty")
  _check(d.encoding in _ENCODINGS, "data.encoding", d.encoding, f"expected one of {_ENCODINGS}")
  _check(isinstance(d.source, str) and bool(d.source) and "/" not in d.source, "data.source",
         d.source, f"must name a dataset source, e.g. 'bach' or {_MANUAL_SOURCE!r} (your own "
         "MIDI folder, with data.manual_dir)")
  _check(not d.manual_dir or d.tfds_name != "virtuoso_midi" or d.source == _MANUAL_SOURCE,
         "data.manual_dir", d.manual_dir,
         f"only data.source={_MANUAL_SOURCE!r} reads a MIDI folder; data.source={d.source!r} has "
         f"its own files (set --config.data.source={_MANUAL_SOURCE})")
  _check(d.windowing in _WINDOWING, "data.windowing", d.windowing, f"expected one of {_WINDOWING}")
  _check(isinstance(d.transpose_semitones, int) and 0 <= d.transpose_semitones <= 12,
         "data.transpose_semitones", d.transpose_semitones, "must be an int in 0..12")
  _check(d.encoding == "token" or d.transpose_semitones == 0, "data.transpose_semitones",
         d.transpose_semitones, "transposition is defined on token ids only; set 0 for char data")
  for f in ("infill_rate", "accompany_rate", "attribute_rate"):
    _check(isinstance(d[f], (int, float)) and 0.0 <= d[f] <= 1.0, f"data.{f}", d[f],
           "must be in [0, 1]")
  _check(d.infill_rate + d.accompany_rate <= 1.0, "data.accompany_rate", d.accompany_rate,
         f"data.infill_rate + data.accompany_rate must be <= 1 (infill_rate={d.infill_rate})")
  tasks = d.infill_rate > 0 or d.accompany_rate > 0 or d.attribute_rate > 0
  _check(not tasks or d.encoding == "token", "data.encoding", d.encoding,
         "infilling, accompaniment and attributes need the token encoding (a char model only "
         "continues); set the *_rate fields to 0")
  _check(isinstance(d.anticipation_ms, int) and d.anticipation_ms > 0, "data.anticipation_ms",
         d.anticipation_ms, "must be a positive int (milliseconds)")
  _check(isinstance(d.attribute_bins, int) and (d.attribute_bins == 0 or 2 <= d.attribute_bins <= 32),
         "data.attribute_bins", d.attribute_bins, "must be 0 (generic edges) or 2..32")
  _check(d.lookahead_entries in _LOOKAHEAD_ENTRIES, "data.lookahead_entries",
         d.lookahead_entries, f"expected one of {_LOOKAHEAD_ENTRIES}")
  _check(d.worker_count >= 0, "data.worker_count", d.worker_count, "must be >= 0")
  _check(d.prefetch >= 0, "data.prefetch", d.prefetch, "must be >= 0")
  _check(d.train_split != d.eval_split, "data.eval_split", d.eval_split,
         f"must differ from data.train_split={d.train_split!r}")

  _check(config.batch_size > 0, "batch_size", config.batch_size, "must be positive")
  _check(config.grad_accum_steps > 0 and config.batch_size % config.grad_accum_steps == 0,
         "grad_accum_steps", config.grad_accum_steps,
         f"must be positive and divide batch_size={config.batch_size}")
  mem = config.memory
  _check(mem.check in ("refuse", "warn", "off"), "memory.check", mem.check,
         "expected 'refuse', 'warn' or 'off'")
  _check(mem.limit_mib >= 0, "memory.limit_mib", mem.limit_mib,
         "must be >= 0 (0 = all free memory)")
  for f in ("num_train_steps", "log_every_steps", "eval_every_steps"):
    _check(config[f] > 0, f, config[f], "must be positive")
  _check(config.num_eval_batches >= 0, "num_eval_batches", config.num_eval_batches, "must be >= 0")

  _check(o.optimizer in _OPTIMIZERS, "optim.optimizer", o.optimizer, f"expected one of {_OPTIMIZERS}")
  _check(o.schedule in _SCHEDULES, "optim.schedule", o.schedule, f"expected one of {_SCHEDULES}")
  _check(o.learning_rate > 0, "optim.learning_rate", o.learning_rate, "must be positive")
  _check(o.warmup_steps >= 0, "optim.warmup_steps", o.warmup_steps, "must be >= 0")
  _check(o.schedule != "noam" or o.warmup_steps > 0, "optim.warmup_steps", o.warmup_steps,
         "the noam schedule needs warmup_steps > 0")
  _check(0.0 <= o.min_lr_ratio <= 1.0, "optim.min_lr_ratio", o.min_lr_ratio, "must be in [0, 1]")
  _check(0.0 <= o.b1 < 1.0 and 0.0 <= o.b2 < 1.0, "optim.b1/b2", (o.b1, o.b2), "must be in [0, 1)")
  _check(o.weight_decay >= 0, "optim.weight_decay", o.weight_decay, "must be >= 0")
  _check(o.optimizer == "adamw" or o.weight_decay == 0, "optim.weight_decay", o.weight_decay,
         "plain 'adam' has no weight decay; use optimizer='adamw' or weight_decay=0")
  _check(o.grad_clip_norm >= 0, "optim.grad_clip_norm", o.grad_clip_norm, "must be >= 0 (0 = off)")

  axes = tuple(p.mesh_axes)
  _check(axes == ("data", "fsdp", "tensor"), "parallel.mesh_axes", axes,
         "must be ('data', 'fsdp', 'tensor')")
  for f in ("mesh_shape", "dcn_mesh_shape"):
    shape = tuple(p[f])
    _check(len(shape) == len(axes), f"parallel.{f}", shape, f"needs one size per axis {axes}")
    _check(all(isinstance(s, int) and (s > 0 or s == -1) for s in shape), f"parallel.{f}", shape,
           "sizes must be positive ints or -1")
    _check(sum(s == -1 for s in shape) <= 1, f"parallel.{f}", shape, "at most one -1")
  rule_names = [r[0] for r in p.logical_axis_rules]
  _check(len(rule_names) == len(set(rule_names)), "parallel.logical_axis_rules", rule_names,
         "duplicate logical axis")
  for name, target in p.logical_axis_rules:
    targets = target if isinstance(target, (tuple, list)) else (target,)
    _check(all(t is None or t in axes for t in targets), "parallel.logical_axis_rules",
           (name, target), f"mesh axes must be among {axes}")

  _check(c.every_steps > 0, "ckpt.every_steps", c.every_steps, "must be positive")
  _check(isinstance(config.sample.every_steps, int) and config.sample.every_steps >= 0,
         "sample.every_steps", config.sample.every_steps, "must be an int >= 0 (0 = off)")
  _check(c.keep >= 1, "ckpt.keep", c.keep, "must be >= 1")
  _check(isinstance(c.fine_tune_from, str), "ckpt.fine_tune_from", c.fine_tune_from,
         "must be a workdir path (or '' for none)")
  _check(isinstance(c.overwrite, bool), "ckpt.overwrite", c.overwrite, "must be True or False")
  _check(isinstance(config.perf.peak_flops, (int, float)) and config.perf.peak_flops >= 0,
         "perf.peak_flops", config.perf.peak_flops,
         "must be >= 0 (FLOP/s of all devices together; 0 = table or cached measurement)")
  return config


# What a checkpoint's state (shapes, optimizer structure) or the meaning of its data position
# depends on. A run resumes across changes of any other field (num_train_steps, cadences, the
# learning-rate schedule, batch size, mesh, ...).
_RESUME_SAFE_MODEL_FIELDS = ("dropout_rate", "attention_dropout_rate",
                             "residual_attention_dropout", "rel_impl", "attn_block_size", "dtype",
                             "remat")
# data.worker_count: the grain iterator's saved state has one entry per worker.
_RESUME_FIXED_DATA_FIELDS = ("tfds_name", "source", "encoding", "manual_dir", "windowing",
                             "train_split", "worker_count")


def resume_conflicts(saved: dict[str, Any], new: dict[str, Any]) -> list[tuple[str, Any, Any]]:
  """[(field, saved value, new value)] of the fields a run cannot resume across.

  `saved`: a run's `config.json` (a dict); `new`: the config to run now (dict or ConfigDict).
  Model fields change the parameters' shapes or meaning (except dropout rates and
  implementation choices: rel_impl, attn_block_size, dtype, remat); data fields change the
  dataset, its encoding or the iterator's saved position; `optim.optimizer` and switching
  gradient clipping on/off change the optimizer state's structure. `model.vocab_size` is
  compared only when `new` has it resolved (> 0).
  """
  if not isinstance(new, dict):
    new = json.loads(to_json(new))
  saved, new = upgrade(saved), upgrade(new)
  out = []

  def get(d, group, field):
    return (d.get(group) or {}).get(field)

  saved_model, new_model = saved.get("model") or {}, new.get("model") or {}
  for field in sorted(set(saved_model) | set(new_model)):
    if field in _RESUME_SAFE_MODEL_FIELDS:
      continue
    a, b = saved_model.get(field), new_model.get(field)
    if field == "vocab_size" and not b:
      continue
    if a != b:
      out.append((f"model.{field}", a, b))
  for field in _RESUME_FIXED_DATA_FIELDS:
    a, b = get(saved, "data", field), get(new, "data", field)
    if a != b:
      out.append((f"data.{field}", a, b))
  for field in ("anticipation_ms", "attribute_bins"):  # What control ids mean; the vocabulary.
    a, b = get(saved, "data", field), get(new, "data", field)
    if a is not None and a != b:  # Runs saved before the field: none.
      out.append((f"data.{field}", a, b))
  a, b = get(saved, "optim", "optimizer"), get(new, "optim", "optimizer")
  if a != b:
    out.append(("optim.optimizer", a, b))
  a, b = get(saved, "optim", "grad_clip_norm"), get(new, "optim", "grad_clip_norm")
  if bool(a) != bool(b):  # optax.chain gains or loses a state entry.
    out.append(("optim.grad_clip_norm", a, b))
  return out


def resolve_vocab_size(config: ml_collections.ConfigDict, codec_vocab_size: int,
                       source: str = "the dataset's codec") -> ml_collections.ConfigDict:
  """Returns a copy of `config` with `model.vocab_size` resolved against the codec's vocabulary.

  0 takes the codec's size; a positive value smaller than it is an error that tells the user
  the override to use.
  """
  v = config.model.vocab_size
  if v and v < codec_vocab_size:
    raise ConfigError(
        f"config.model.vocab_size={v} is smaller than the vocabulary of {source} "
        f"({codec_vocab_size} ids); the model could not embed its tokens. Pass "
        f"--config.model.vocab_size=0 (use the codec's size) or a value >= {codec_vocab_size}.")
  config = ml_collections.ConfigDict(config.to_dict())
  config.model.vocab_size = v or int(codec_vocab_size)
  return config


def to_json(config: ml_collections.ConfigDict) -> str:
  """The config as JSON (tuples become lists), sorted, for `<workdir>/config.json`."""
  return json.dumps(config.to_dict(), indent=2, sort_keys=True, default=str)


def from_json_file(path: str | os.PathLike) -> ml_collections.ConfigDict:
  """Reads `<workdir>/config.json` back into a ConfigDict (lists of the schema become tuples)."""
  data = paths.read_json(path)

  def fix(node):
    if isinstance(node, dict):
      return {k: fix(v) for k, v in node.items()}
    if isinstance(node, list):
      return tuple(fix(v) for v in node)
    return node

  return ml_collections.ConfigDict(fix(upgrade(data)))
