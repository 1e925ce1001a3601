"""Every console script setup.py installs points at a callable that exists."""

import importlib
import pathlib
import re

import pytest

SETUP = pathlib.Path(__file__).resolve().parents[1] / "setup.py"
SCRIPTS = re.findall(r'"([\w-]+)=([\w.]+):(\w+)"', SETUP.read_text())


def test_setup_declares_the_documented_commands():
  assert {name for name, _, _ in SCRIPTS} >= {
      "virtuoso-train", "virtuoso-sample", "virtuoso-compose", "virtuoso-encode"}


@pytest.mark.parametrize("name,module,attr", SCRIPTS)
def test_console_script_target_exists(name, module, attr):
  assert callable(getattr(importlib.import_module(module), attr, None)), f"{name} -> {module}:{attr}"
