"""virtuoso_jax keeps freed host memory for reuse (glibc), so repeated big buffers stop faulting."""

import subprocess
import sys

import pytest

_PROBE = r"""
import resource, sys
import virtuoso_jax  # noqa: F401  (the process set-up runs on import)
import ctypes
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
def faults_of_one_buffer():  # as XLA's temporaries: plain malloc, touched, freed
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  n = 64 * 2**20  # 64 MiB: far above glibc's mmap threshold
  buf = libc.malloc(n)
  libc.memset(buf, 1, n)
  libc.free(buf)
  return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
faults_of_one_buffer()
print(faults_of_one_buffer())
"""


def _second_buffer_faults(env_value):
  env = {"VIRTUOSO_KEEP_HOST_MEMORY": env_value, "PATH": "/usr/bin:/bin"}
  out = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True,
                       check=True, timeout=120)
  return int(out.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt only")
def test_freed_buffers_are_reused_without_page_faults():
  pages = 64 * 2**20 // 4096
  assert _second_buffer_faults("0") > pages // 2  # default glibc: unmapped on free, faults again
  assert _second_buffer_faults("1") < pages // 20  # kept: the second buffer reuses the memory
