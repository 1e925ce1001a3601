"""Test-wide set-up. The simulated CPU device count must be set before JAX initialises
(style.md P9), so it happens here, at the very top, before anything imports jax."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import pathlib  # noqa: E402

import pytest  # noqa: E402

import hermetic_corpus  # noqa: E402  (tests/ is on sys.path; imports no jax)
from virtuoso_jax import runtime  # noqa: E402  (no jax)

# The test process runs as the binaries do (the library's import sets nothing itself).
runtime.configure_binary()
runtime.quiet_library_logs()

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
# The one place tests find the real MIDI corpora (never copied into the repo).
CORPORA_DIR = pathlib.Path(os.environ.get("VIRTUOSO_CORPORA", REPO_ROOT.parent / "shared" / "corpora"))


def session_shared_dir(tmp_path_factory, name: str) -> pathlib.Path:
  """A folder shared by every xdist worker of this pytest session (build it under a lock)."""
  root = tmp_path_factory.getbasetemp()
  if os.environ.get("PYTEST_XDIST_WORKER"):
    root = root.parent  # The session's folder above the workers' own basetemps.
  return root / name


@pytest.fixture(scope="session")
def fixture_corpus(tmp_path_factory) -> pathlib.Path:
  """The hermetic MIDI corpus (tests/hermetic_corpus.py; layout of ../shared/corpora): synthetic
  multi-instrument songs with drums and music21's Bach chorales, made once per session."""
  return hermetic_corpus.build(session_shared_dir(tmp_path_factory, "fixture_corpus"))


@pytest.fixture(scope="session")
def corpora_dir(tmp_path_factory, fixture_corpus) -> pathlib.Path:  # pylint: disable=redefined-outer-name
  """The real-MIDI corpora folder, for the few tests *about* those corpora (round trips over
  every file, the Tegridy sources). Absent: those tests run on a stand-in with the same folder
  layout made of the hermetic corpus (hermetic_corpus.build_stand_in_corpora; its
  `is_stand_in` tells them apart), so a fresh clone skips nothing; with
  VIRTUOSO_REQUIRE_CORPORA=1 (CI sets it) an absent folder fails instead."""
  if CORPORA_DIR.is_dir():
    return CORPORA_DIR
  if os.environ.get("VIRTUOSO_REQUIRE_CORPORA") == "1":
    pytest.fail(f"real MIDI corpora not found at {CORPORA_DIR}; set VIRTUOSO_CORPORA to a folder "
                "of corpora (the layout of ../shared/corpora)")
  return hermetic_corpus.build_stand_in_corpora(
      session_shared_dir(tmp_path_factory, "stand_in_corpora"), fixture_corpus)


@pytest.fixture(scope="session")
def prompt_midi(fixture_corpus) -> pathlib.Path:  # pylint: disable=redefined-outer-name
  """A MIDI prompt for the sample and compose tests: several instruments and drums."""
  return hermetic_corpus.prompt_path(fixture_corpus)
