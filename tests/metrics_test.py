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


# ------------------------------------------------------------------ MFU denominator


class _FakeDevice:
  def __init__(self, platform, kind):
    self.platform, self.device_kind = platform, kind


def test_accelerator_peak_is_the_spec_sheet_table():
  peak, how = metrics_lib.peak_flops_per_s([_FakeDevice("gpu", "NVIDIA H200")] * 2)
  assert peak == 2 * 989e12 and "spec-sheet" in how and "NVIDIA H200" in how
  assert metrics_lib.peak_flops_per_s([_FakeDevice("tpu", "TPU v5 lite")])[0] == 197e12
  assert metrics_lib.peak_flops_per_s([_FakeDevice("gpu", "NVIDIA A100-SXM4-80GB")])[0] == 312e12


def test_cpu_peak_is_measured_once_per_machine_and_cached(tmp_path, monkeypatch):
  monkeypatch.setenv("VIRTUOSO_CACHE_DIR", str(tmp_path))
  measured = iter([1.5e11, 4.5e11])  # A second measurement would differ 3x (a noisy machine).
  calls = []

  def fake_measure():
    calls.append(1)
    return next(measured)
  monkeypatch.setattr(metrics_lib, "measure_stable_peak", fake_measure)
  cpu = [_FakeDevice("cpu", "cpu")] * 8
  first, how1 = metrics_lib.peak_flops_per_s(cpu)
  second, how2 = metrics_lib.peak_flops_per_s(cpu)
  assert first == second == 1.5e11 and len(calls) == 1
  assert "measured now" in how1 and "cached in" in how2 and str(tmp_path) in how2
  assert "cores" in how2  # Keyed by CPU model and core count.
  # The config's value wins and says so.
  assert metrics_lib.peak_flops_per_s(cpu, override=2e11) == (2e11, "config perf.peak_flops")


def test_progress_line_leads_with_tokens_per_second():
  line = metrics_lib.Progress(10, 0).line(5, {"train/loss": 1.0, "perf/tokens_per_s": 1234.0,
                                              "perf/mfu": 0.25})
  assert line.index("tok/s") < line.index("MFU")
