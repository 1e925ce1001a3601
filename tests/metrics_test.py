"""metrics.jsonl keeps one row per step across resumes."""

from virtuoso_jax import metrics as metrics_lib


def test_resume_drops_rows_past_the_resumed_step(tmp_path):
  w = metrics_lib.MetricWriter(str(tmp_path), tensorboard=False)
  for step in range(1, 7):
    w.write(step, {"train/loss": 1.0 / step})
  w.close()
  with open(tmp_path / "metrics.jsonl", "a", encoding="utf-8") as f:
    f.write('{"step": 7, "train/lo')  # The torn last line of a kill -9.
  w = metrics_lib.MetricWriter(str(tmp_path), tensorboard=False, resume_step=3)
  w.write(4, {"train/loss": 0.5})
  w.close()
  rows = metrics_lib.read_metrics(str(tmp_path))
  assert [r["step"] for r in rows] == [1, 2, 3, 4]
  assert rows[-1]["train/loss"] == 0.5 and rows[2]["train/loss"] == 1.0 / 3
  # Without resume_step (or resuming at the last row) nothing is dropped.
  metrics_lib.MetricWriter(str(tmp_path), tensorboard=False, resume_step=4).close()
  metrics_lib.MetricWriter(str(tmp_path), tensorboard=False).close()
  assert len(metrics_lib.read_metrics(str(tmp_path))) == 4
