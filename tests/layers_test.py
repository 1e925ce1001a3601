"""The import layers of docs/architecture.md, read from the source (no imports run)."""

import ast
import pathlib

PKG = pathlib.Path(__file__).resolve().parents[1] / "virtuoso_jax"
BINARIES = {"virtuoso_jax.main", "virtuoso_jax.sample", "virtuoso_jax.compose",
            "virtuoso_jax.evaluate", "virtuoso_jax.encoding.__main__"}


def _module(path: pathlib.Path) -> str:
  parts = path.relative_to(PKG.parent).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: pathlib.Path) -> set[str]:
  """Every module `path` imports, anywhere in the file (lazy imports included)."""
  out = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      out.update(a.name for a in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module:
      out.add(node.module)
      out.update(f"{node.module}.{a.name}" for a in node.names)
  return out


MODULES = {_module(p): _imports(p) for p in PKG.rglob("*.py")}


def _offenders(modules, forbidden) -> dict[str, list[str]]:
  bad = {}
  for name in modules:
    hits = sorted(i for i in MODULES[name] if any(i == f or i.startswith(f + ".")
                                                  for f in forbidden))
    if hits:
      bad[name] = hits
  return bad


def test_no_module_imports_a_binary_or_data_pipelines():
  assert len(MODULES) > 20 and BINARIES <= set(MODULES)
  assert _offenders([m for m in MODULES if m not in BINARIES],
                    BINARIES | {"data_pipelines"}) == {}
  assert _offenders(BINARIES, {"data_pipelines"}) == {}


def test_encoding_imports_no_jax_and_models_no_pipeline():
  encoding = [m for m in MODULES if m.startswith("virtuoso_jax.encoding")]
  assert _offenders(encoding, {"jax", "flax", "optax", "orbax", "tensorflow",
                               "tensorflow_datasets", "grain"}) == {}
  models = [m for m in MODULES if m.startswith("virtuoso_jax.models")]
  assert _offenders(models, {"virtuoso_jax.input_pipeline", "virtuoso_jax.dataset",
                             "virtuoso_jax.checkpointing", "virtuoso_jax.train",
                             "virtuoso_jax.trainer", "virtuoso_jax.run_dir"}) == {}


def test_the_step_math_and_the_inference_library_stay_below_the_loop():
  # steps.py is pure math; the sampler and the dataset module never pull in the batch pipeline.
  assert _offenders(["virtuoso_jax.steps"], {"virtuoso_jax.trainer", "virtuoso_jax.train",
                                             "virtuoso_jax.input_pipeline"}) == {}
  assert _offenders(["virtuoso_jax.inference", "virtuoso_jax.dataset", "virtuoso_jax.run_dir",
                     "virtuoso_jax.composition"],
                    {"virtuoso_jax.input_pipeline", "virtuoso_jax.trainer",
                     "virtuoso_jax.train", "grain"}) == {}


def test_paths_is_the_bottom_layer_and_the_only_file_io():
  # virtuoso_jax.paths imports epath and nothing of the project (everything imports it).
  assert {i for i in MODULES["virtuoso_jax.paths"] if i.startswith(("virtuoso_jax", "jax"))
          } == set()
  # The project's file I/O goes through it: no other module opens files by name or moves them
  # (reading /proc is the OS, not a file of the project).
  for path in PKG.rglob("*.py"):
    if _module(path) == "virtuoso_jax.paths":
      continue
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.Call):
        f = node.func
        name = f.id if isinstance(f, ast.Name) else (
            f"{getattr(f.value, 'id', '')}.{f.attr}" if isinstance(f, ast.Attribute) else "")
        arg = node.args[0] if node.args else None
        if name == "open" and isinstance(arg, ast.Constant) and str(arg.value).startswith("/proc/"):
          continue
        assert name not in {"open", "os.makedirs", "os.replace", "os.rename", "os.listdir",
                            "shutil.move", "shutil.rmtree", "json.dump", "json.load"}, (
            f"{path.name}:{node.lineno} calls {name}; use virtuoso_jax.paths")
