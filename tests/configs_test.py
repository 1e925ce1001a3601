"""Every config file and variant loads and validates; bad values are named in the error."""

import json

import pytest

from virtuoso_jax import config_lib

VARIANTS = {
    "default.py": [None],
    "rga.py": [None, "original", "tiny", "bach", "long", "pod"],
    "gpt.py": [None, "original", "tiny", "long", "pod"],
    "char_gpt.py": [None, "original", "tiny", "long", "pod"],
}
CASES = [(f, v) for f, vs in VARIANTS.items() for v in vs]


@pytest.mark.parametrize("file,variant", CASES)
def test_config_loads_and_validates(file, variant):
  spec = f"configs/{file}" + (f":{variant}" if variant else "")
  config = config_lib.validate(config_lib.load_config(spec))
  assert config.model.name in ("rga", "gpt")
  # Round trip through config.json (what the sampling binary reads).
  back = json.loads(config_lib.to_json(config))
  assert back["model"]["max_len"] == config.model.max_len


def test_every_config_file_is_covered():
  files = {p.name for p in (config_lib.REPO_ROOT / "configs").glob("*.py")
           if "def get_config(" in p.read_text()}  # variants.py holds shared helpers only
  assert files == set(VARIANTS)


def test_long_variants_have_long_context():
  for f in ("rga.py", "gpt.py", "char_gpt.py"):
    assert config_lib.load_config(f"configs/{f}:long").model.max_len >= 4096


def test_original_rga_matches_the_original():
  c = config_lib.load_config("configs/rga.py:original")
  m = c.model
  assert (m.num_layers, m.num_heads, m.emb_dim, m.mlp_dim, m.max_len, m.vocab_size) == (
      6, 8, 512, 512, 1024, 390)
  assert (c.optim.optimizer, c.optim.schedule, c.batch_size) == ("adam", "noam", 4)


def test_overrides_and_unknown_fields():
  c = config_lib.load_config("configs/rga.py:tiny", ["model.num_layers=3", "optim.learning_rate=1",
                                                      "parallel.mesh_shape=[2, 2, 2]"])
  assert c.model.num_layers == 3 and c.optim.learning_rate == 1.0
  assert c.parallel.mesh_shape == (2, 2, 2)
  with pytest.raises(config_lib.ConfigError, match="model.num_layerz"):
    config_lib.load_config("configs/rga.py:tiny", ["model.num_layerz=3"])
  with pytest.raises(config_lib.ConfigError,
                     match=r"\(--config.model.num_layers=abc\): model.num_layers is an int"):
    config_lib.load_config("configs/rga.py:tiny", {"model.num_layers": "abc"})
  with pytest.raises(ValueError, match="unknown variant"):
    config_lib.load_config("configs/rga.py:huge")
  with pytest.raises(config_lib.ConfigError, match="not found"):
    config_lib.load_config("configs/nope.py")


def test_overrides_parse_as_on_the_command_line():
  """Strings and dict values go through ml_collections' flag parsers, by the field's type."""
  c = config_lib.load_config("configs/rga.py:tiny", {
      "parallel.mesh_shape": "(2,2,2)", "optim.learning_rate": 1, "ckpt.overwrite": "true",
      "data.data_dir": "", "model.dtype": "float32"})
  assert c.parallel.mesh_shape == (2, 2, 2) and c.optim.learning_rate == 1.0
  assert isinstance(c.optim.learning_rate, float) and c.ckpt.overwrite is True
  assert (c.data.data_dir, c.model.dtype) == ("", "float32")
  c, argv = config_lib.load_config_argv([
      "prog", "--workdir", "w", "--config", "configs/rga.py:tiny", "--noconfig.ckpt.enabled",
      "--config.num_train_steps", "7"])
  assert (c.ckpt.enabled, c.num_train_steps) == (False, 7)
  assert argv[4] == f"{config_lib.REPO_ROOT / 'configs' / 'rga.py'}:tiny"  # Made absolute.
  with pytest.raises(config_lib.ConfigError, match="comes before --config"):
    config_lib.load_config_argv(["prog", "--config.seed=1", "--config=configs/rga.py"])
  assert config_lib.load_config_argv(["prog", "--helpfull"]) == (None, ["prog", "--helpfull"])


@pytest.mark.parametrize("field,value,match", [
    ("model.emb_dim", 130, "divisible by model.num_heads"),
    ("batch_size", 10, "grad_accum_steps"),
    ("data.windowing", "glue", "data.windowing"),
    ("data.lookahead_entries", "last", "data.lookahead_entries"),
    ("data.encoding", "midi", "data.encoding"),
    ("data.source", "", "data.source"),
    ("parallel.mesh_shape", (-1, -1, 1), "at most one -1"),
    ("optim.schedule", "linear", "optim.schedule"),
    ("model.dropout_rate", 1.0, "model.dropout_rate"),
    ("data.manual_dir", "/my/midis", "source=manual"),  # bach has its own files.
])
def test_bad_values_are_named(field, value, match):
  c = config_lib.load_config("configs/rga.py:tiny", {field: value, "grad_accum_steps": 4}
                             if field == "batch_size" else {field: value})
  with pytest.raises(config_lib.ConfigError, match=match):
    config_lib.validate(c)


def test_char_config_rejects_transposition():
  c = config_lib.load_config("configs/char_gpt.py:tiny", {"data.transpose_semitones": 3})
  with pytest.raises(config_lib.ConfigError, match="token ids only"):
    config_lib.validate(c)


def test_vocab_size_resolution():
  c = config_lib.load_config("configs/rga.py:tiny")
  assert config_lib.resolve_vocab_size(c, 1061).model.vocab_size == 1061
  c = config_lib.load_config("configs/rga.py:original")
  with pytest.raises(config_lib.ConfigError, match="--config.model.vocab_size=0"):
    config_lib.resolve_vocab_size(c, 1061)
  c.model.vocab_size = 2048
  assert config_lib.resolve_vocab_size(c, 1061).model.vocab_size == 2048


def test_config_json_round_trip(tmp_path):
  c = config_lib.load_config("configs/rga.py:tiny")
  path = tmp_path / "config.json"
  path.write_text(config_lib.to_json(c))
  back = config_lib.from_json_file(path)
  assert back.parallel.mesh_shape == c.parallel.mesh_shape
  assert back.model.to_dict() == c.model.to_dict()


@pytest.mark.parametrize("override,match", [
    ("--config.data.encodng=char",
     "error: bad config override (--config.data.encodng): no such key 'encodng' "
     'Did you mean "encoding"'),
    ("--config.model.num_layers=abc",
     "error: bad config override (--config.model.num_layers=abc): model.num_layers is an int; "
     "invalid literal for int()"),
])
def test_main_names_a_bad_override_without_a_traceback(tmp_path, override, match):
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  res = subprocess.run(
      [sys.executable, "-m", "virtuoso_jax.main", "--config=configs/rga.py:tiny",
       f"--workdir={tmp_path}", override],
      cwd=config_lib.REPO_ROOT, capture_output=True, text=True, timeout=120)
  assert res.returncode == 1
  assert match in res.stderr and "Traceback" not in res.stderr, res.stderr[-2000:]
  with pytest.raises(config_lib.ConfigError) as err:  # load_config says the same.
    config_lib.load_config("configs/rga.py:tiny", [override.removeprefix("--config.")])
  assert f"error: {err.value}" in res.stderr


def _train_cli(cwd, *args):
  import os  # pylint: disable=g-import-not-at-top
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")
  env.pop("PYTHONPATH", None)
  return subprocess.run([sys.executable, "-m", "virtuoso_jax.main", *args], cwd=cwd, env=env,
                        capture_output=True, text=True, timeout=180)


def _one_error_line(res) -> str:
  errors = [l for l in res.stderr.splitlines() if l.startswith("error:")]
  assert res.returncode != 0 and len(errors) == 1, res.stderr[-3000:]
  assert "Traceback" not in res.stderr, res.stderr[-3000:]
  return errors[0]


def test_config_files_load_from_any_working_directory(tmp_path):
  """Outside the repository `configs` is not importable; the files load their siblings by path
  (this failed with `No module named 'configs'`). num_train_steps=0 stops at validation, after
  the file has loaded, so no training runs."""
  spec = f"{config_lib.REPO_ROOT / 'configs' / 'char_gpt.py'}:tiny"
  res = _train_cli(tmp_path, f"--config={spec}", f"--workdir={tmp_path / 'w'}",
                   "--config.num_train_steps=0")
  assert _one_error_line(res) == "error: config.num_train_steps=0: must be positive"
  # A copied configs folder loads its own siblings (a user's edited default.py wins).
  import shutil  # pylint: disable=g-import-not-at-top
  mine = tmp_path / "my_configs"
  shutil.copytree(config_lib.REPO_ROOT / "configs", mine)
  (mine / "default.py").write_text((mine / "default.py").read_text().replace(
      "config.seed = 0", "config.seed = 1234"))
  assert config_lib.load_config(f"{mine / 'rga.py'}:tiny").seed == 1234
  assert config_lib.load_config("configs/rga.py:tiny").seed == 0


@pytest.mark.parametrize("body,variant,match", [
    (None, "", "config file '{missing}' not found"),
    ("def get_config(arg=None:\n  pass\n", "", "has a syntax error at line 1"),
    ("def get_config(arg=None):\n  return 1 / 0\n", "", "ZeroDivisionError: division by zero"),
    ("x = 1\n", "", "defines no get_config"),
    (None, "huge", "unknown variant 'huge'"),
])
def test_bad_config_file_is_one_error_line(tmp_path, body, variant, match):
  if body is None and variant:
    path = str(config_lib.REPO_ROOT / "configs" / "rga.py")
  else:
    path = str(tmp_path / "missing.py")
    if body is not None:
      path = str(tmp_path / "mine.py")
      (tmp_path / "mine.py").write_text(body)
  spec = path + (f":{variant}" if variant else "")
  with pytest.raises(config_lib.ConfigError):
    config_lib.load_config(spec)
  res = _train_cli(tmp_path, f"--config={spec}", f"--workdir={tmp_path / 'w'}")
  line = _one_error_line(res)
  assert match.format(missing=path) in line, line
