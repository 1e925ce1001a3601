"""Test-wide set-up. The simulated CPU device count must be set before JAX initialises
(style.md P9), so it happens here, at the very top, before anything imports jax."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import pathlib  # noqa: E402

import pytest  # noqa: E402

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
# The one place tests find the real MIDI corpora (never copied into the repo).
CORPORA_DIR = pathlib.Path(os.environ.get("VIRTUOSO_CORPORA", REPO_ROOT.parent / "shared" / "corpora"))


@pytest.fixture(scope="session")
def corpora_dir() -> pathlib.Path:
  """The real-MIDI corpora folder. Absent: the test is skipped with a clear reason, unless
  VIRTUOSO_REQUIRE_CORPORA=1 (CI sets it), where it fails."""
  if not CORPORA_DIR.is_dir():
    msg = (f"real MIDI corpora not found at {CORPORA_DIR}; set VIRTUOSO_CORPORA to a folder of "
           "corpora (the layout of ../shared/corpora)")
    if os.environ.get("VIRTUOSO_REQUIRE_CORPORA") == "1":
      pytest.fail(msg)
    pytest.skip(msg)
  return CORPORA_DIR
