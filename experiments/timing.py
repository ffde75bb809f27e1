"""Device timing shared by the benchmarks: CUPTI device time and the HBM copy ceiling.

Defines no flags, so every benchmark main can import it.
"""

from __future__ import annotations

import glob
import os
import re
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


def device_op_times(trace_dir: str) -> list[dict]:
  """Time per HLO op of a `jax.profiler.trace` written to `trace_dir`, largest first.

  Each row: {"op": hlo_op (or the kernel name where the trace has none), "us": summed
  time, "calls": count, "kernel": one kernel name}. Reads the newest `*.xplane.pb` under
  trace_dir. Device planes (GPU kernels) count; with none (CPU), the host events that
  carry an `hlo_op` stat (XLA:CPU thunks) do.
  """
  paths = sorted(glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True),
                 key=os.path.getmtime)
  if not paths:
    raise FileNotFoundError(f"no *.xplane.pb under {trace_dir}: was jax.profiler.trace run "
                            "with this directory?")
  planes = list(jax.profiler.ProfileData.from_file(paths[-1]).planes)
  on_device = any(p.name.startswith("/device:") for p in planes)
  rows: dict[str, dict] = {}
  for plane in planes:
    if on_device != plane.name.startswith("/device:"):
      continue
    for line in plane.lines:
      for ev in line.events:
        stats = dict(ev.stats)
        if not on_device and "hlo_op" not in stats:
          continue
        op = str(stats.get("hlo_op") or ev.name)
        r = rows.setdefault(op, {"op": op, "us": 0.0, "calls": 0, "kernel": ev.name})
        r["us"] += ev.duration_ns / 1e3
        r["calls"] += 1
  return sorted(rows.values(), key=lambda r: -r["us"])


def _hlo_table(hlo_text: str, title: str) -> dict[int, str]:
  """One id-keyed table (FileNames, FunctionNames, FileLocations, StackFrames) of HLO text."""
  m = re.search(rf"^{title}\n((?:\d+ .*\n)*)", hlo_text, re.M)
  if not m:
    return {}
  return {int(k): v for k, v in re.findall(r"^(\d+) (.*)$", m.group(1), re.M)}


def hlo_op_sources(hlo_text: str) -> dict[str, str]:
  """Instruction name -> "op_name @ file:line function" from the metadata of compiled HLO
  text (the source line comes from its stack-frame tables; "?" where there is none)."""
  files = {k: v.strip('"').rsplit("/", 1)[-1] for k, v in _hlo_table(hlo_text, "FileNames").items()}
  funcs = {k: v.strip('"') for k, v in _hlo_table(hlo_text, "FunctionNames").items()}
  locs = {}
  for k, v in _hlo_table(hlo_text, "FileLocations").items():
    f = dict(re.findall(r"(\w+)=(\d+)", v))
    locs[k] = (f"{files.get(int(f.get('file_name_id', 0)), '?')}:{f.get('line', '?')} "
               f"{funcs.get(int(f.get('function_name_id', 0)), '?')}")
  frames = {k: locs.get(int(dict(re.findall(r"(\w+)=(\d+)", v)).get("file_location_id", 0)), "?")
            for k, v in _hlo_table(hlo_text, "StackFrames").items()}
  out = {}
  pat = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=.*?metadata=\{([^}]*)\}", re.M)
  for m in pat.finditer(hlo_text):
    meta = m.group(2)
    op_name = re.search(r'op_name="([^"]*)"', meta)
    frame = re.search(r"stack_frame_id=(\d+)", meta)
    file_line = re.search(r'source_file="([^"]*)" source_line=(\d+)', meta)
    where = (frames.get(int(frame.group(1)), "?") if frame else
             f"{file_line.group(1).rsplit('/', 1)[-1]}:{file_line.group(2)}" if file_line else "?")
    out[m.group(1)] = f"{op_name.group(1).rsplit('/', 1)[-1] if op_name else '?'} @ {where}"
  return out
