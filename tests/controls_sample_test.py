"""Beyond continuation at sampling time: infill a span, accompany a kept part, attributes."""

import dataclasses

import numpy as np
import pytest

from sample_cli_test import char_run, control_run, token_run  # noqa: F401  (fixtures)
from virtuoso_jax import inference
from virtuoso_jax import tasks
from virtuoso_jax.encoding import Notes
from virtuoso_jax.encoding import token_codec as tc


def _piece(run):
  rng = np.random.default_rng(0)
  n = 60
  notes = Notes(np.sort(rng.integers(0, 1200, n)), rng.integers(5, 60, n), rng.integers(45, 80, n),
                rng.integers(40, 100, n), rng.choice([0, 40], n))
  return run.codec.quantize(notes)


def _rows(notes):
  return sorted(map(tuple, notes.to_rows()))


def _contains(piece, part):
  """Every note of `part` is in `piece` (as a multiset)."""
  rows = _rows(piece)
  for r in _rows(part):
    if r not in rows:
      return False
    rows.remove(r)
  return True


def test_infill_keeps_every_note_outside_the_span(control_run):
  run = inference.load_run(control_run)
  piece = _piece(run)
  grid = run.enc_config.grid_ms / 1000
  start, end = 4.0, 7.0
  req = inference.SampleRequest(num_samples=3, seed=1, prompt_notes=piece, infill=(start, end),
                                max_tokens=400)
  for sample in inference.generate(run, req):
    out = sample.notes
    s, e = int(round(start / grid)), int(round(end / grid))
    outside = (piece.onset < s) | (piece.onset >= e)
    assert _contains(out, piece[outside])  # Kept exactly.
    # The new music runs until the kept music resumes (no kept note starts in between), and
    # nothing is generated anywhere else.
    until = piece.onset[piece.onset >= e].min()
    new = out[(out.onset >= s) & (out.onset < until)]
    assert len(out) == int(outside.sum()) + len(new)
    _, forced = run.codec.decode_parts(sample.ids)  # The right context was heard.
    assert len(forced) > 0 and forced.onset.min() >= e
    assert sample.ids[1] == _task_id(run, "infill")  # The task is stated, as in training.
    # Version 4: the right context opens with the infill control-time ids, as in training;
    # version 5: its fields are the control fields.
    kinds = run.codec.kinds(sample.ids)
    opens = kinds[np.isin(kinds, tc.CONTROL_TIME_KINDS)]
    assert run.codec.version == 5 and len(opens) == len(forced) and (opens == tc.K_ICTIME).all()
    assert (kinds == tc.K_CPITCH).sum() == len(forced)
    # The span hands over to the kept music: each new note ends by the first onset after the
    # span of its instrument near its pitch, its voice (no note sounds on under the kept part's
    # first ones); with none near, by the instrument's first.
    # (The rule itself is encoding_controls_test's; here the sampler must honour it.)
    release = tc.release_table(piece[piece.onset >= e], 0)
    for n in new.to_rows():
      onset, duration, pitch, _, ins = (int(x) for x in n)
      assert onset + duration <= max(int(release[ins, pitch]), onset + 1), (n, release[ins, pitch])
  # The generated window runs from the span's start to where the kept music resumes.
  plan = inference.plan_controls(run, req)
  assert plan.window == (s, int(until))
  # --infill_ties lifts the bound (the notes sound on as the model wrote them); alone it is an
  # error.
  assert "release" in plan.controls
  tied = dataclasses.replace(req, infill_ties=True)
  assert "release" not in inference.plan_controls(run, tied).controls
  with pytest.raises(inference.SampleError, match="--infill_ties applies to --infill only"):
    inference.SampleRequest(prompt_notes=piece, infill_ties=True)


def test_accompaniment_keeps_the_part_and_generates_the_others(control_run):
  run = inference.load_run(control_run)
  piece = _piece(run)
  for req in (inference.SampleRequest(num_samples=2, seed=2, prompt_notes=piece,
                                      keep_instruments=[40], max_tokens=500),
              inference.SampleRequest(num_samples=2, seed=3, prompt_notes=piece,
                                      keep_melody=True, max_tokens=500)):
    for sample in inference.generate(run, req):
      kept = (piece[piece.instrument == 40] if req.keep_instruments else
              piece[tasks.melody(piece)])
      assert _contains(sample.notes, kept)
      # The model heard the kept part: its notes were forced into the sequence as controls.
      _, forced = run.codec.decode_parts(sample.ids)
      assert len(forced) > 0 and _contains(kept, forced)
      assert not (run.codec.kinds(sample.ids) == tc.K_ICTIME).any()  # Not an infill's ids.
      assert sample.ids[1] == _task_id(
          run, "accompany_parts" if req.keep_instruments else "accompany_melody")
      end = int((kept.onset + kept.duration).max())
      assert (sample.notes.onset < end).all()


def _task_id(run, task):
  return run.codec.attribute_ids({"task": task})[0]


@pytest.mark.parametrize("version", (2, 3, 4))
def test_older_version_runs_still_sample(control_run, tmp_path, version):
  """A run saved before the control fields (token version 4: encoding.json without
  controls.control_fields), before the infill control ids too (version 3: nor
  controls.infill_control_ids) or before the task id too (version 2: nor controls.task_ids)
  loads as that version and infills (and accompanies) with its own ids."""
  import json  # pylint: disable=g-import-not-at-top
  import shutil  # pylint: disable=g-import-not-at-top
  old = tmp_path / f"v{version}"
  shutil.copytree(control_run, old)
  enc = json.loads((old / "encoding.json").read_text())
  del enc["controls"]["control_fields"]
  if version <= 3:
    del enc["controls"]["infill_control_ids"]
  if version == 2:
    del enc["controls"]["task_ids"]
  enc["token_version"] = version
  (old / "encoding.json").write_text(json.dumps(enc))
  run = inference.load_run(str(old))
  assert run.codec.version == version
  piece = _piece(run)
  requests = (inference.SampleRequest(num_samples=1, seed=1, prompt_notes=piece,
                                      infill=(4.0, 7.0), max_tokens=300),
              inference.SampleRequest(num_samples=1, seed=2, prompt_notes=piece,
                                      keep_melody=True, max_tokens=300))
  # Version 3 differs from 4 only in how an infill's controls open: infilling shows it.
  for req in requests[:1] if version == 3 else requests:
    for sample in inference.generate(run, req):
      kinds = run.codec.kinds(sample.ids)
      assert not (kinds < 0).any()  # Only this version's ids.
      assert (sample.ids[1] == _task_id(run, "infill" if req.infill else "accompany_melody")
              if version >= 3 else not (kinds == tc.K_TASK).any())
      assert (kinds == tc.K_ICTIME).any() == (version == 4 and bool(req.infill))
      assert _contains(sample.notes, piece[tasks.melody(piece)] if req.keep_melody else
                       piece[piece.onset < int(4.0 / (run.enc_config.grid_ms / 1000))])


def test_attributes_condition_a_continuation(control_run):
  run = inference.load_run(control_run)
  req = inference.SampleRequest(num_samples=2, seed=0, max_notes=10,
                                attributes={"density": 3, "polyphony": 2})
  assert len(run.codec.controls.density_edges) == 3  # data.attribute_bins=4, fitted.
  stated = run.codec.attribute_ids({"density": 3, "polyphony": 2}).tolist()
  for sample in inference.generate(run, req):
    assert sample.ids[0] == run.codec.bos_id
    assert run.codec.kinds(sample.ids[1:3]).tolist() == [12, 13]  # density, polyphony ids.
    assert sample.ids[1:3].tolist() == stated
  with pytest.raises(inference.SampleError, match="outside"):
    inference.generate(run, inference.SampleRequest(attributes={"density": 99}))


def test_models_that_cannot_say_so(token_run, char_run):
  piece = _piece(inference.load_run(token_run))
  with pytest.raises(inference.SampleError, match="continuation only"):
    inference.generate(inference.load_run(token_run),
                       inference.SampleRequest(prompt_notes=piece, infill=(1.0, 2.0)))
  with pytest.raises(inference.SampleError, match="char model, which only continues"):
    inference.generate(inference.load_run(char_run),
                       inference.SampleRequest(prompt_notes=piece, keep_melody=True))
  with pytest.raises(inference.SampleError, match="START_S < END_S"):
    inference.SampleRequest(prompt_notes=piece, infill=(3.0, 2.0))
  with pytest.raises(inference.SampleError, match="give it with --prompt_midi"):
    inference.SampleRequest(infill=(1.0, 2.0))


def _sample_cli(*args):
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  from sample_cli_test import REPO  # pylint: disable=g-import-not-at-top
  return subprocess.run([sys.executable, "-m", "virtuoso_jax.sample", *map(str, args)],
                        cwd=REPO, capture_output=True, text=True, timeout=600, check=False)


def test_the_sample_binary_infills_a_midi_file(control_run, token_run, tmp_path):
  from virtuoso_jax.encoding import midi_to_notes, notes_to_midi  # pylint: disable=g-import-not-at-top
  run = inference.load_run(control_run)
  piece = _piece(run).replace(onset=_piece(run).onset + 300)  # Starts at 3 s: times are kept.
  src = tmp_path / "song.mid"
  notes_to_midi(piece, src)
  res = _sample_cli(f"--workdir={control_run}", f"--prompt_midi={src}", "--infill=5:8",
                    "--num_samples=1", "--audio=false", f"--out={tmp_path / 'out'}")
  assert res.returncode == 0, res.stderr[-2000:]
  out = midi_to_notes(tmp_path / "out" / "sample_00.mid")
  outside = (piece.onset < 500) | (piece.onset >= 800)
  assert _contains(out, run.codec.quantize(piece)[outside])
  bad = _sample_cli(f"--workdir={control_run}", f"--prompt_midi={src}", "--infill=5-8")
  assert bad.returncode != 0 and "--infill must be START_S:END_S" in bad.stderr
  assert "Traceback" not in bad.stderr
  v1 = _sample_cli(f"--workdir={token_run}", f"--prompt_midi={src}", "--keep_melody")
  assert v1.returncode != 0 and "continuation only" in v1.stderr and "Traceback" not in v1.stderr


def test_compose_infills_and_accompanies_the_composition(control_run, tmp_path):
  from virtuoso_jax import composition  # pylint: disable=g-import-not-at-top
  run = inference.load_run(control_run)
  piece = _piece(run)
  session = composition.Session.create(str(tmp_path / "s"), control_run, notes=piece)
  cands = session.infill(2.0, 5.0, run=run, candidates=2)
  assert len(cands) == 2
  outside = (piece.onset < 200) | (piece.onset >= 500)
  assert all(_contains(c, piece[outside]) for c in cands)
  session.accept(1)
  assert composition.Session.load(str(tmp_path / "s")).notes == cands[1]
  cands = session.accompany(keep_instruments=[0], run=run, candidates=1)
  assert _contains(cands[0], session.notes[session.notes.instrument == 0])
  assert session.undo() == piece
  res = _compose_cli("infill", f"--session={tmp_path / 's'}", "--span=5")
  assert res.returncode != 0 and "--span=START_S:END_S" in res.stderr
  res = _compose_cli("accompany", f"--session={tmp_path / 's'}")
  assert res.returncode != 0 and "--keep_instruments=... or --keep_melody" in res.stderr


def _compose_cli(*args):
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  from sample_cli_test import REPO  # pylint: disable=g-import-not-at-top
  return subprocess.run([sys.executable, "-m", "virtuoso_jax.compose", *map(str, args)],
                        cwd=REPO, capture_output=True, text=True, timeout=600, check=False)


def test_runs_written_before_token_versions_still_sample(token_run, tmp_path):
  """A workdir as the previous releases wrote it: config.json with data.tfds_config, an
  encoding.json without token_version/controls."""
  import json  # pylint: disable=g-import-not-at-top
  import shutil  # pylint: disable=g-import-not-at-top
  from virtuoso_jax import run_dir  # pylint: disable=g-import-not-at-top
  old = tmp_path / "old"
  shutil.copytree(token_run, old)
  config = json.loads((old / run_dir.CONFIG_FILE).read_text())
  for key in ("source", "encoding", "infill_rate", "accompany_rate", "attribute_rate",
              "anticipation_ms"):
    config["data"].pop(key, None)
  config["data"]["tfds_config"] = "token"
  (old / run_dir.CONFIG_FILE).write_text(json.dumps(config))
  enc = json.loads((old / run_dir.ENCODING_FILE).read_text())
  enc.pop("token_version")
  enc.pop("controls")
  (old / run_dir.ENCODING_FILE).write_text(json.dumps(enc))
  run = inference.load_run(str(old))
  assert run.codec.version == 1 and run.kind == "token"
  samples = inference.generate(run, inference.SampleRequest(num_samples=2, max_notes=5))
  assert all(len(s.notes) > 0 for s in samples)
