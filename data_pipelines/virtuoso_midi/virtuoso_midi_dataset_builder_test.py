"""DatasetBuilderTestCase per config of virtuoso_midi (needs TensorFlow: the [tfds] extra).

The harness builds each config from `dummy_data/` with `open`/`os` mocked in the builder module
and reads it back with `as_dataset`, so these tests build as tfrecord (array_record has no
`as_dataset`); the TF-free array_record path is covered in tests/dataset_test.py.

Expected split sizes come from the dummy data (see dummy_data/make_dummy_data.py): 12 unique
good songs split by content hash 10/1/1; the 2 songs of `archives/more_songs.zip` (which the
download tests hand out for every archive) all land in `train` (fewer than 3 files).
"""

import os
import pathlib
import subprocess
import sys

import pytest

pytest.importorskip("tensorflow", reason="DatasetBuilderTestCase needs TensorFlow ([tfds] extra)")
pytest.importorskip("dill", reason="tfds.testing needs dill ([tfds] extra)")

import tensorflow_datasets as tfds  # noqa: E402

from data_pipelines.virtuoso_midi import virtuoso_midi_dataset_builder  # noqa: E402


class _Base:
  """Shared settings (a mixin: a TestCase base would itself be collected and test every
  config, bach_* included, whose conversion takes minutes and writes to download_dir)."""

  DATASET_CLASS = virtuoso_midi_dataset_builder.Builder
  # checksums.tsv cannot be registered without network here; see the README.
  SKIP_CHECKSUMS = True

  def _make_builder(self, config=None):
    return self.dataset_class(data_dir=self.tmp_dir, config=config, version=self.VERSION,
                              file_format="tfrecord", num_workers=1)


class ManualTokenTest(_Base, tfds.testing.DatasetBuilderTestCase):
  BUILDER_CONFIG_NAMES_TO_TEST = ["token"]
  SPLITS = {"train": 10, "validation": 1, "test": 1}


class ManualCharTest(_Base, tfds.testing.DatasetBuilderTestCase):
  BUILDER_CONFIG_NAMES_TO_TEST = ["char"]
  SPLITS = {"train": 10, "validation": 1, "test": 1}


class TegridyTokenTest(_Base, tfds.testing.DatasetBuilderTestCase):
  BUILDER_CONFIG_NAMES_TO_TEST = ["tegridy_token"]
  DL_DOWNLOAD_RESULT = {name: "archives/more_songs.zip"
                        for name in virtuoso_midi_dataset_builder.TEGRIDY_URLS}
  SPLITS = {"train": 2}  # 4 identical zips: 8 files, 2 unique songs.


class MaestroCharTest(_Base, tfds.testing.DatasetBuilderTestCase):
  BUILDER_CONFIG_NAMES_TO_TEST = ["maestro_char"]
  DL_DOWNLOAD_RESULT = {name: "archives/more_songs.zip"
                        for name in virtuoso_midi_dataset_builder.MAESTRO_URLS}
  SPLITS = {"train": 2}


class LakhTokenTest(_Base, tfds.testing.DatasetBuilderTestCase):
  BUILDER_CONFIG_NAMES_TO_TEST = ["lakh_token"]
  DL_EXTRACT_RESULT = {name: "songs" for name in virtuoso_midi_dataset_builder.LAKH_URLS}
  SPLITS = {"train": 8, "validation": 1, "test": 1}  # songs/: 11 files, one a duplicate.


if __name__ == "__main__":
  tfds.testing.test_main()


def test_tfds_cli_builds_from_the_repo_root(tmp_path):
  """The documented command, run as the user runs it (what CI checks for the [tfds] extra)."""
  repo = pathlib.Path(__file__).resolve().parents[2]
  dummy = repo / "data_pipelines" / "virtuoso_midi" / "dummy_data"
  # -P: the working directory is not put on sys.path, as with the `tfds` console script.
  cmd = [sys.executable, "-P", "-m", "tensorflow_datasets.scripts.cli.main", "build",
         "data_pipelines/virtuoso_midi", "--config=token", f"--manual_dir={dummy}",
         f"--data_dir={tmp_path}"]
  env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "VIRTUOSO_BUILD_WORKERS": "1"}
  env.pop("VIRTUOSO_VERBOSE", None)
  out = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, timeout=300, env=env)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "skipped:           corrupt=1, empty=2, over_limit=0, duplicate=1, unsupported=0" in out.stdout
  # Quiet: no progress bars or TFDS prints, and one line instead of the ~150-line DatasetInfo.
  for noise in ("\x1b[", "Shuffling", "Downloading and preparing", "tfds.core.DatasetInfo(",
                "Done writing"):
    assert noise not in out.stdout + out.stderr, noise
  assert "[virtuoso_midi] virtuoso_midi/token/1.0.0 prepared at " in out.stdout
  prepared = tmp_path / "virtuoso_midi" / "token" / "1.0.0"
  assert sorted(p.name for p in prepared.glob("*.array_record-*")) == [
      f"virtuoso_midi-{s}.array_record-00000-of-00001" for s in ("test", "train", "validation")]
  source = tfds.data_source("virtuoso_midi/token", data_dir=os.fspath(tmp_path), split="train")
  assert len(source) == 10
