"""virtuoso_jax.run_dir: the one owner of a workdir's config.json and encoding.json."""

import json

import pytest

from virtuoso_jax import config_lib
from virtuoso_jax import encoding
from virtuoso_jax import run_dir


def _config(**overrides):
  return config_lib.validate(config_lib.load_config("configs/rga.py:tiny", overrides))


def test_written_files_read_back_without_the_dataset(tmp_path):
  config = config_lib.resolve_vocab_size(_config(), encoding.TokenCodec().vocab_size)
  codec = encoding.TokenCodec(encoding.EncodingConfig(grid_ms=8))
  run_dir.write(str(tmp_path), config, codec)
  saved = json.loads((tmp_path / run_dir.ENCODING_FILE).read_text())
  assert saved["kind"] == "token" and saved["dataset"] == "virtuoso_midi/bach_token"
  back, back_codec = run_dir.load_codec(str(tmp_path))
  assert back.to_dict() == config.to_dict()
  assert isinstance(back_codec, encoding.TokenCodec) and back_codec.config.grid_ms == 8


def test_bad_run_directories_are_named(tmp_path):
  with pytest.raises(run_dir.RunError, match="does not exist"):
    run_dir.load_config(str(tmp_path / "nowhere"))
  with pytest.raises(run_dir.RunError, match="not a training workdir"):
    run_dir.load_config(str(tmp_path))
  (tmp_path / run_dir.CONFIG_FILE).write_text(json.dumps({"model": {"name": "lstm"}}))
  with pytest.raises(run_dir.RunError, match="model.name"):
    run_dir.load_config(str(tmp_path))
  config = config_lib.resolve_vocab_size(_config(), 1061)
  run_dir.write(str(tmp_path), config, encoding.TokenCodec())
  (tmp_path / run_dir.ENCODING_FILE).write_text(
      json.dumps({"kind": "char", "encoding": encoding.EncodingConfig().to_dict()}))
  with pytest.raises(run_dir.RunError, match="is for a char codec"):
    run_dir.load_codec(str(tmp_path))


def test_runs_saved_with_tfds_config_are_upgraded(tmp_path):
  """config.json written before data.source/data.encoding existed still loads and resumes."""
  config = config_lib.resolve_vocab_size(_config(**{"data.source": "manual",
                                                    "data.encoding": "char",
                                                    "data.transpose_semitones": 0}), 200)
  old = json.loads(config_lib.to_json(config))
  for key in ("source", "encoding"):
    del old["data"][key]
  old["data"]["tfds_config"] = "char"
  (tmp_path / run_dir.CONFIG_FILE).write_text(json.dumps(old))
  back = run_dir.load_config(str(tmp_path))
  assert (back.data.source, back.data.encoding) == ("manual", "char")
  assert config_lib.resume_conflicts(old, config) == []
  upgraded = config_lib.upgrade({"data": {"tfds_config": "lakh_token"}})
  assert upgraded["data"] == {"source": "lakh", "encoding": "token", "attribute_bins": 0}
  # Version-2 runs saved before fitted attribute bins kept the generic edges (0); today's
  # saved configs are left alone.
  assert config_lib.upgrade({"data": {"source": "bach"}})["data"]["attribute_bins"] == 0
  today = {"data": {"source": "bach", "attribute_bins": 4}}
  assert config_lib.upgrade(today) is today


def test_fine_tuning_needs_the_same_encoding(tmp_path):
  config = _config()
  src = tmp_path / "src"
  src.mkdir()
  run_dir.check_same_encoding(str(src), config, encoding.TokenCodec())  # No encoding.json.
  run_dir.write_encoding(str(src), config, encoding.TokenCodec())
  run_dir.check_same_encoding(str(src), config, encoding.TokenCodec())
  other = encoding.TokenCodec(encoding.EncodingConfig(token_layout="compact"))
  with pytest.raises(run_dir.RunConfigMismatchError, match="token encoding"):
    run_dir.check_same_encoding(str(src), config, other)


def test_token_version_travels_in_encoding_json(tmp_path):
  v2 = encoding.TokenCodec(encoding.EncodingConfig(), encoding.ControlConfig(anticipation_ms=1000))
  config = config_lib.resolve_vocab_size(_config(), v2.vocab_size)
  run_dir.write(str(tmp_path), config, v2)
  saved = json.loads((tmp_path / run_dir.ENCODING_FILE).read_text())
  assert saved["token_version"] == 2 and saved["controls"]["anticipation_ms"] == 1000
  _, back = run_dir.load_codec(str(tmp_path))
  assert back.version == 2 and back.vocab_size == v2.vocab_size
  assert back.controls == v2.controls
  # A version-1 run's config cannot hold the version-2 codec: both are named.
  small = config_lib.resolve_vocab_size(_config(), encoding.TokenCodec().vocab_size)
  (tmp_path / run_dir.CONFIG_FILE).write_text(config_lib.to_json(small))
  with pytest.raises(run_dir.RunError, match=r"token-version-2 codec \(\d+ ids"):
    run_dir.load_codec(str(tmp_path))
  # Fine-tuning across versions would read other ids.
  with pytest.raises(run_dir.RunConfigMismatchError, match="controls"):
    run_dir.check_same_encoding(str(tmp_path), config, encoding.TokenCodec())
  with pytest.raises(ValueError, match="char model only continues"):
    encoding.make_codec("char", encoding.EncodingConfig(), encoding.ControlConfig())
