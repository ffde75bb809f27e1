"""Device timing shared by the benchmarks: CUPTI device time and the HBM copy ceiling.

Defines no flags, so every benchmark main can import it.
"""

from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp


def _cupti():
  try:
    from jax.experimental.mosaic.gpu import profiler  # pylint: disable=g-import-not-at-top
    return profiler
  except ImportError:
    return None


def time_us(fn, *args, iters: int, chain: bool = False) -> float:
  """Median device time of one call of the jitted fn, in microseconds (after warm-up).

  chain: fn donates its first argument and returns its new value (an in-place update):
  calls are chained, x = fn(x, ...), and timed by the wall clock over pipelined calls.
  """
  if chain:
    x, rest = args[0], args[1:]
    for _ in range(2):
      x = jax.block_until_ready(fn(x, *rest))
    samples = []
    for _ in range(5):
      t0 = time.perf_counter()
      for _ in range(iters):
        x = fn(x, *rest)
      jax.block_until_ready(x)
      samples.append((time.perf_counter() - t0) / iters)
    return 1e6 * statistics.median(samples)
  jax.block_until_ready(fn(*args))  # compile + warm-up
  jax.block_until_ready(fn(*args))
  profiler = _cupti() if jax.devices()[0].platform == "gpu" else None
  if profiler is not None:
    try:
      _, times_ms = profiler.measure(fn, iterations=iters)(*args)
      if times_ms:
        times_ms = times_ms if isinstance(times_ms, list) else [times_ms]
        return 1e3 * statistics.median(times_ms)
    except RuntimeError:  # CUPTI unavailable or busy: fall back to wall-clock
      pass
  samples = []
  for _ in range(5):
    t0 = time.perf_counter()
    outs = [fn(*args) for _ in range(iters)]
    jax.block_until_ready(outs)
    samples.append((time.perf_counter() - t0) / iters)
  return 1e6 * statistics.median(samples)


def copy_bandwidth(iters: int) -> float:
  """Bytes per second of a large elementwise copy (read + write), the HBM ceiling."""
  n = 1 << 28 if jax.devices()[0].platform == "gpu" else 1 << 22
  x = jax.random.uniform(jax.random.key(0), (n,), jnp.float32)
  us = time_us(jax.jit(lambda a: a + 1.0), x, iters=iters)
  return 2 * 4 * n / (us * 1e-6)
