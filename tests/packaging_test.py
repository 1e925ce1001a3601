"""Every console script setup.py installs points at a callable that exists."""

import pathlib
import re
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
SCRIPTS = re.findall(r'"([\w-]+)=([\w.]+):(\w+)"', (REPO / "setup.py").read_text())


def test_setup_declares_the_documented_commands():
  assert {name for name, _, _ in SCRIPTS} >= {
      "virtuoso-train", "virtuoso-sample", "virtuoso-compose", "virtuoso-encode",
      "virtuoso-evaluate"}


def test_console_script_targets_exist():
  # Each in a fresh interpreter: a binary defines its absl flags at import (as absl binaries
  # do), so two binaries never share a process.
  code = ("import importlib, sys\n"
          "print(callable(getattr(importlib.import_module(sys.argv[1]), sys.argv[2], None)))")
  for name, mod, attr in SCRIPTS:
    res = subprocess.run([sys.executable, "-c", code, mod, attr], cwd=REPO,
                         capture_output=True, text=True, timeout=300, check=False)
    assert res.returncode == 0 and res.stdout.strip().splitlines()[-1] == "True", (
        name, res.stderr[-2000:])
