"""The binaries keep freed host memory for reuse (glibc), so repeated big buffers stop faulting."""

import subprocess
import sys
import threading
import time

import pytest

from virtuoso_jax import host_memory

_PROBE = r"""
import resource, sys
from virtuoso_jax import runtime
runtime.configure_binary()  # What the binaries do first (the library's import does nothing).
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
  env = {"VIRTUOSO_KEEP_HOST_MEMORY": env_value, "PATH": "/usr/bin:/bin", "JAX_PLATFORMS": "cpu"}
  out = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True,
                       check=True, timeout=120)
  return int(out.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt only")
def test_freed_buffers_are_reused_without_page_faults():
  pages = 64 * 2**20 // 4096
  assert _second_buffer_faults("0") > pages // 2  # default glibc: unmapped on free, faults again
  assert _second_buffer_faults("1") < pages // 20  # kept: the second buffer reuses the memory


def _libc_malloc():
  import ctypes  # pylint: disable=g-import-not-at-top
  libc = ctypes.CDLL(None)
  libc.malloc.restype = ctypes.c_void_p
  libc.malloc.argtypes = [ctypes.c_size_t]
  libc.free.argtypes = [ctypes.c_void_p]
  return libc


@pytest.mark.skipif(host_memory.heap_in_use() is None, reason="needs glibc mallinfo2, kept heap")
def test_wait_for_release_waits_until_another_thread_frees_the_temporaries():
  libc = _libc_malloc()
  n = 256 * 2**20
  baseline = host_memory.heap_in_use()
  buf = libc.malloc(n)  # as a running step's temporaries
  assert host_memory.heap_in_use() >= baseline + n
  freed = threading.Event()

  def free_later():
    time.sleep(0.3)
    freed.set()
    libc.free(buf)

  t = threading.Thread(target=free_later)
  t.start()
  assert host_memory.wait_for_release(baseline, n, timeout_s=30.0)
  assert freed.is_set() and host_memory.heap_in_use() < baseline + n // 2
  t.join()


@pytest.mark.skipif(host_memory.heap_in_use() is None, reason="needs glibc mallinfo2, kept heap")
def test_wait_for_release_gives_up_after_its_timeout():
  libc = _libc_malloc()
  n = 64 * 2**20
  baseline = host_memory.heap_in_use()
  buf = libc.malloc(n)
  try:
    t0 = time.monotonic()
    assert not host_memory.wait_for_release(baseline, n, timeout_s=0.05)
    assert time.monotonic() - t0 < 5.0
  finally:
    libc.free(buf)
  assert host_memory.wait_for_release(baseline, n, timeout_s=0.05)
  assert host_memory.wait_for_release(None, n) and host_memory.wait_for_release(baseline, 0)
