"""Every console script setup.py installs points at a callable that exists."""

import json
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
  # In a fresh interpreter: the CLI modules define absl flags at import, which may clash with
  # other CLI modules a test process has already imported.
  code = ("import importlib, json, sys\n"
          "out = {}\n"
          "for name, mod, attr in json.loads(sys.argv[1]):\n"
          "  out[name] = callable(getattr(importlib.import_module(mod), attr, None))\n"
          "print(json.dumps(out))")
  res = subprocess.run([sys.executable, "-c", code, json.dumps(SCRIPTS)], cwd=REPO,
                       capture_output=True, text=True, timeout=300, check=True)
  found = json.loads(res.stdout.strip().splitlines()[-1])
  assert found == {name: True for name, _, _ in SCRIPTS}, found
