"""What a user sees from `sample` and `compose`: lengths asked for are honoured (and each sample
says why it stopped), bad flags / prompts / run files / session files are one `error:` line
naming the file or flag (no traceback), checked before the model loads, and compose's
accept/undo/show/set/export never import JAX."""

import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from sample_cli_test import REPO, char_run, token_run  # noqa: F401  (fixtures)
from virtuoso_jax import composition
from virtuoso_jax import encoding
from virtuoso_jax import inference
from virtuoso_jax import run_dir

ENV = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")
# Run a binary and report on stderr whether JAX was imported (atexit runs after SystemExit).
DRIVER = ("import atexit, sys\n"
          "atexit.register(lambda: print('JAX_IMPORTED' if 'jax' in sys.modules else 'NO_JAX',"
          " file=sys.stderr))\n"
          "import importlib\n"
          "mod = importlib.import_module(sys.argv[1])\n"
          "sys.argv = ['prog'] + sys.argv[2:]\n"
          "mod.run()\n")


def cli(module, *args):
  p = subprocess.run([sys.executable, "-c", DRIVER, module, *args], cwd=REPO, env=ENV,
                     capture_output=True, text=True, timeout=300, check=False)
  return p


def one_error(p, *needles):
  errors = [l for l in p.stderr.splitlines() if l.startswith("error:")]
  assert p.returncode != 0 and len(errors) == 1, (p.stdout[-2000:], p.stderr[-3000:])
  assert "Traceback" not in p.stderr and "Event loop is closed" not in p.stderr, p.stderr[-3000:]
  for n in needles:
    assert n in errors[0], errors[0]
  return errors[0]


def summaries(stdout):
  """[(new notes, stopped)] from the per-sample summary lines."""
  return [(int(m.group(1)), m.group(2)) for m in
          re.finditer(r"^sample_\d\d: .*?(\d+) new notes, stopped: (.+?) \(\d+ tokens/s",
                      stdout, re.M)]


# ---------------------------------------------------------------------------- lengths


def test_max_notes_and_seconds_are_honoured_past_the_context(token_run, tmp_path):
  """The fixture's config.sample.max_new_tokens is 120 (about 24 notes) and its context 48
  tokens: 60 notes need the budget raised and the window to slide many times."""
  p = cli("virtuoso_jax.sample", f"--workdir={token_run}", f"--out={tmp_path}", "--audio=false",
          "--max_notes=60", "--num_samples=4", "--seed=3")
  assert p.returncode == 0, p.stderr[-3000:]
  assert "tokens, sized for --max_notes=60" in p.stdout
  rows = summaries(p.stdout)
  assert len(rows) == 4, p.stdout
  for notes, stopped in rows:
    assert stopped == "EOS" or (stopped == "notes (60 reached)" and notes == 60), rows
  assert any(n == 60 for n, _ in rows), rows
  p = cli("virtuoso_jax.sample", f"--workdir={token_run}", f"--out={tmp_path}", "--audio=false",
          "--max_seconds=20", "--num_samples=4", "--seed=3")
  assert p.returncode == 0, p.stderr[-3000:]
  rows = summaries(p.stdout)
  assert rows and all(s in ("EOS", "seconds (20 s reached)") for _, s in rows), rows
  assert any(s.startswith("seconds") for _, s in rows), rows
  # An explicit --max_tokens too small for the notes asked for is refused, before loading.
  p = cli("virtuoso_jax.sample", f"--workdir={token_run}", "--max_notes=60", "--max_tokens=50")
  one_error(p, "--max_tokens=50 is too small for --max_notes=60", "leave it out")
  assert "NO_JAX" in p.stderr


def test_char_model_notes_are_honoured(char_run, tmp_path):
  p = cli("virtuoso_jax.sample", f"--workdir={char_run}", f"--out={tmp_path}", "--audio=false",
          "--max_notes=30", "--num_samples=2")
  assert p.returncode == 0, p.stderr[-3000:]
  rows = summaries(p.stdout)
  assert rows == [(30, "notes (30 reached)")] * 2, p.stdout


def test_token_budget_fits_the_request():
  codec = encoding.TokenCodec()
  n, why = inference.token_budget(codec, inference.SampleRequest(max_notes=200))
  assert n >= 200 * codec.tokens_per_note and "--max_notes=200" in why
  n, _ = inference.token_budget(codec, inference.SampleRequest(max_seconds=20))
  assert n >= 20 * 1000 // codec.config.grid_ms * codec.tokens_per_note
  assert inference.token_budget(codec, inference.SampleRequest())[0] == inference.DEFAULT_MAX_TOKENS
  with pytest.raises(inference.SampleError, match="sampler's limit"):
    inference.token_budget(codec, inference.SampleRequest(max_seconds=1e7))


# ---------------------------------------------------------------------------- sample errors


@pytest.fixture()
def run_without_checkpoints(token_run, tmp_path):
  """config.json + encoding.json only: a flag checked before the model loads names itself;
  one checked after would say 'no checkpoint'."""
  w = tmp_path / "nockpt"
  w.mkdir()
  for f in ("config.json", run_dir.ENCODING_FILE):
    shutil.copy(os.path.join(token_run, f), w / f)
  return str(w)


@pytest.mark.parametrize("flag,needle", [
    ("--temperature=-1", "--temperature must be >= 0"),
    ("--top_p=2", "--top_p must be in (0, 1]"),
    ("--top_k=-1", "--top_k must be an int"),
    ("--instruments=200", "--instruments must be GM programs 0..127 or 128"),
    ("--instruments=abc", "got 'abc'"),
    ("--seed=" + str(10**30), "--seed must be an int in 0..4294967295"),
    ("--max_seconds=1e9", "sampler's limit"),
    ("--num_samples=0", "--num_samples must be"),
])
def test_sample_checks_flags_before_loading(run_without_checkpoints, flag, needle):
  p = cli("virtuoso_jax.sample", f"--workdir={run_without_checkpoints}", flag)
  one_error(p, needle)
  assert "NO_JAX" in p.stderr


def test_unreadable_prompt_is_one_error_naming_the_file(run_without_checkpoints, tmp_path):
  bad = tmp_path / "bad.mid"
  bad.write_bytes(b"MThd\x00\x00\x00\x06\x00\x01\x00\x02\x01\xe0MTrk\xff\xff\xff\xff garbage")
  for path in (str(bad), str(tmp_path)):  # Malformed bytes; a directory.
    p = cli("virtuoso_jax.sample", f"--workdir={run_without_checkpoints}", f"--prompt_midi={path}")
    one_error(p, path)
  empty = tmp_path / "empty.mid"
  encoding.notes_to_midi(encoding.Notes.empty(), str(empty))
  p = cli("virtuoso_jax.sample", f"--workdir={run_without_checkpoints}", f"--prompt_midi={empty}")
  one_error(p, str(empty))


@pytest.mark.parametrize("field,value,needle", [
    ("name", "transformer", "config.model.name='transformer'"),
    ("max_len", "big", "config.model.max_len='big'"),
    ("emb_dim", 64, "does not match"),
])
def test_hand_edited_config_json_is_one_error(token_run, tmp_path, field, value, needle):
  w = tmp_path / "run"
  shutil.copytree(token_run, w)
  cfg = json.loads((w / "config.json").read_text())
  cfg["model"][field] = value
  (w / "config.json").write_text(json.dumps(cfg))
  p = cli("virtuoso_jax.sample", f"--workdir={w}", f"--out={tmp_path / 'o'}")
  one_error(p, needle, "config.json")


# ---------------------------------------------------------------------------- compose


def test_compose_flags_knobs_and_light_commands(token_run, tmp_path):
  s = str(tmp_path / "s")
  p = cli("virtuoso_jax.compose", "bogus", f"--session={s}")
  one_error(p, "unknown command 'bogus'")
  p = cli("virtuoso_jax.compose", "start", f"--session={s}", f"--workdir={token_run}",
          f"--seed={10**30}")
  one_error(p, "--seed must be an int")
  assert "NO_JAX" in p.stderr
  composition.Session.create(s, token_run)
  for flag, needle in (("--instruments=abc", "got 'abc'"), ("--temperature=-1", "--temperature"),
                       ("--candidates=1000000000", "--candidates must be an int in 1..64"),
                       ("--top_p=2", "--top_p")):
    p = cli("virtuoso_jax.compose", "continue", f"--session={s}", flag)
    one_error(p, needle)
    assert "NO_JAX" in p.stderr, flag
  # A knob given to one continue applies to that block only; --keep / set keep it.
  p = cli("virtuoso_jax.compose", "continue", f"--session={s}", "--notes=3", "--temperature=0.5",
          "--candidates=2")
  assert p.returncode == 0, p.stderr[-3000:]
  assert "temperature=0.5" in p.stdout and "(this block only)" in p.stdout
  assert "stopped: notes (3 reached)" in p.stdout
  assert composition.Session.load(s).settings == composition.Settings()
  p = cli("virtuoso_jax.compose", "continue", f"--session={s}", "--notes=2", "--top_k=5", "--keep")
  assert p.returncode == 0, p.stderr[-3000:]
  got = composition.Session.load(s).settings
  assert (got.top_k, got.block_notes, got.temperature) == (5, 2, 1.0)
  p = cli("virtuoso_jax.compose", "set", f"--session={s}", "--temperature=0.8",
          "--instruments=0,128")
  assert p.returncode == 0 and "NO_JAX" in p.stderr, p.stderr[-3000:]
  # accept / show / undo / export read the codec only: no JAX, no model.
  for args in (["accept", "--candidate=0"], ["show"], ["export", f"--out={tmp_path / 'f'}",
                                                       "--audio=false"], ["undo"]):
    p = cli("virtuoso_jax.compose", *args, f"--session={s}")
    assert p.returncode == 0, (args, p.stderr[-3000:])
    assert "NO_JAX" in p.stderr, args
    if args == ["show"]:
      assert "temperature=0.8" in p.stdout and "top_k=5" in p.stdout
      assert "instruments=[0, 128]" in p.stdout and "settings in force" in p.stdout


def _tampered(state):
  bad = []
  bad.append(([1, 2], "must hold an object"))
  for key, value, needle in (
      ("seed", 10**30, "seed must be an int in 0..4294967295"),
      ("seed", "x", "seed must be an int"),
      ("notes", [[0, 10, 60]], "notes[0] must be [onset"),
      ("notes", [[0, 10, 999, 80, 0]], "notes[0] pitch must be an int in 0..127"),
      ("notes", [[10**12, 10, 60, 80, 0]], "notes[0] onset must be an int"),
      ("notes", {"a": 1}, "notes must be a list"),
      ("candidates", [[[0, 10, 60, 0, 0]]], "candidates[0][0] velocity must be"),
      ("history", [[[0, 10, 60, 80, 300]]], "history[0][0] instrument must be"),
      ("workdir", 5, "workdir must be a non-empty string"),
  ):
    bad.append((dict(state, **{key: value}), needle))
  bad.append((dict(state, settings=dict(state["settings"], candidates=10**9)),
              "settings.candidates must be an int in 1..64"))
  bad.append((dict(state, settings=dict(state["settings"], temperature="hot")),
              "settings.temperature must be >= 0"))
  return bad


def test_tampered_state_file_is_one_error_naming_file_and_field(token_run, tmp_path):
  s = tmp_path / "s"
  session = composition.Session.create(str(s), token_run)
  good = session.state
  file = s / composition.STATE_FILE
  for state, needle in _tampered(good):
    file.write_text(json.dumps(state))
    with pytest.raises(composition.SampleError, match=re.escape(needle)):
      composition.Session.load(str(s))
  # Through the binary: one line naming the file and the field; nothing is (re)written.
  file.write_text(json.dumps(dict(good, candidates=[[[0, 10, 999, 80, 0]]])))
  before = file.read_text()
  for cmd in ("accept", "show", "continue", "undo", "export"):
    p = cli("virtuoso_jax.compose", cmd, f"--session={s}")
    one_error(p, str(file), "candidates[0][0] pitch")
    assert file.read_text() == before
  # A session never saves a state that fails validation.
  session = composition.Session(str(s), dict(good))
  session.state["notes"] = [[0, 10, 999, 80, 0]]
  with pytest.raises(composition.SampleError, match="pitch"):
    session.save()
  assert file.read_text() == before
