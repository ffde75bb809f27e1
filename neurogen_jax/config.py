"""Brain configuration: areas, pathways, the five-phase table and neuron constants.

Everything here is a frozen dataclass, hashable, so a `BrainConfig` can be a static
argument of `jax.jit`. Sizes are the seed's numbers at `scale=1`; every area scales
by the one `scale` factor and is rounded to whole tiles of `tile` neurons.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Mapping
from typing import Any, Literal

AREA_NAMES = ("thalamus", "wernicke", "broca", "hippocampus", "pfc", "basal_ganglia")
# The Pallas event-kernel variants (`pallas.events.propagate_events_pallas(variant=...)`).
EVENTS_VARIANTS = ("tiles", "rows", "atomic")
PROPAGATION_BACKENDS = ("auto", "triton", "mosaic_gpu")
# The lowerings of the per-token synapse update (`pallas.plasticity.synapse_update`).
SYNAPSE_BACKENDS = ("auto", "triton", "mosaic_gpu")
PHASE_NAMES = ("sensation", "perception", "integration", "selection", "action")


# BrainConfig fields that choose how a step runs, not what it computes: a checkpoint
# resumes or loads under other values (e.g. trained with XLA on a CPU, resumed with Pallas on
# a GPU; the implementations compute the same function, tests/test_pallas.py).
EXECUTION_FIELDS = ("implementation", "tick_unroll", "events_variant", "fuse_propagation",
                    "propagation_backend", "synapse_backend")


def without_execution_fields(fields: Mapping[str, Any]) -> dict:
  """A BrainConfig as a dict (`checkpoint.config_to_dict`) without its EXECUTION_FIELDS:
  what two configs must share for one's checkpoint to serve the other."""
  return {k: v for k, v in fields.items() if k not in EXECUTION_FIELDS}


@dataclasses.dataclass(frozen=True)
class AreaSpec:
  """One brain area: `size` neurons at scale 1, a fraction of them excitatory (Dale's law)."""

  name: str
  size: int
  excitatory_fraction: float = 0.8


@dataclasses.dataclass(frozen=True)
class PathwaySpec:
  """A projection `source -> target` with a scalar gain.

  `share` is this pathway's part of the target's fan-in (in tiles, relative to the other
  pathways into the same target). A negative gain makes the whole projection inhibitory
  (the PFC->thalamus feedback, di-synaptic inhibition through thalamic interneurons).
  """

  source: str
  target: str
  gain: float
  share: float = 1.0

  @property
  def name(self) -> str:
    return f"{self.source}->{self.target}"


@dataclasses.dataclass(frozen=True)
class PhaseSpec:
  """One row of the phase table.

  ticks: simulation ticks of this phase (dt_ms each).
  input_gain: token-drive gain per area (order of `BrainConfig.areas`).
  pathway_gain: multiplier per pathway (order of `BrainConfig.pathways`) on top of its gain.
  learn: per area, whether plasticity accumulates eligibility during this phase.
  read: whether Broca's traces are read out in this phase.
  bg_gate: whether the basal-ganglia Go/No-Go gate scales Broca's input in this phase.
  """

  name: str
  ticks: int
  input_gain: tuple[float, ...]
  pathway_gain: tuple[float, ...]
  learn: tuple[bool, ...]
  read: bool = False
  bg_gate: bool = False


# The ten named pathways of the seed, with its gains; recurrence inside each area follows.
SEED_PATHWAYS = (
    PathwaySpec("thalamus", "wernicke", 1.0, share=2.0),
    PathwaySpec("wernicke", "pfc", 0.8, share=2.0),
    PathwaySpec("wernicke", "hippocampus", 0.9, share=2.0),
    PathwaySpec("hippocampus", "pfc", 0.7, share=1.0),
    PathwaySpec("pfc", "basal_ganglia", 1.0, share=2.0),
    PathwaySpec("basal_ganglia", "broca", 0.5, share=1.0),
    PathwaySpec("pfc", "broca", 0.8, share=2.0),
    PathwaySpec("pfc", "thalamus", -0.6, share=1.0),
    PathwaySpec("pfc", "wernicke", 0.5, share=1.0),
    PathwaySpec("pfc", "pfc", 0.7, share=2.0),
)
SEED_RECURRENCE = (
    PathwaySpec("thalamus", "thalamus", 0.5, share=1.0),
    PathwaySpec("wernicke", "wernicke", 0.5, share=1.0),
    PathwaySpec("broca", "broca", 0.5, share=1.0),
    PathwaySpec("hippocampus", "hippocampus", 0.6, share=1.0),
    PathwaySpec("basal_ganglia", "basal_ganglia", 0.5, share=1.0),
)
SEED_AREAS = (
    AreaSpec("thalamus", 2048),
    AreaSpec("wernicke", 16384),
    AreaSpec("broca", 16384),
    AreaSpec("hippocampus", 8192),
    AreaSpec("pfc", 32768),
    AreaSpec("basal_ganglia", 4096),
)


def seed_phases(ticks: tuple[int, ...] = (2, 4, 6, 4, 4), n_pathways: int = 15) -> tuple[PhaseSpec, ...]:
  """The seed's timing (Sensation 0-50 ms, Perception 50-150, Integration 150-300,
  Selection 300-400, Action 400+) as tick counts in the same 1:2:3:2:2 proportion.

  The token drive enters the thalamus in Sensation, then Wernicke and Broca and (more
  weakly) the hippocampus, PFC and basal ganglia in Perception and Integration: the
  feasibility probes found that input reaching only the thalamus leaves the readout worse
  than a unigram model, and `experiments.probe_features` found that a Broca that hears
  the token only through PFC and the basal ganglia keeps too little of it to be read
  (current token decoded at 4.5 nats vs 0.4 with direct drive; docs/LEARNING.md).
  Every area learns in every phase; Broca is read in Selection and Action; the basal
  ganglia gate Broca in Selection and Action.
  """
  ones = (1.0,) * n_pathways
  learn = (True,) * len(AREA_NAMES)
  #           thal  wern  broca hipp  pfc   bg
  sens_in = (1.0, 0.5, 0.0, 0.25, 0.25, 0.25)
  perc_in = (0.5, 1.0, 1.0, 0.5, 0.5, 0.5)
  intg_in = (0.0, 0.25, 0.25, 0.25, 0.25, 0.25)
  none_in = (0.0,) * len(AREA_NAMES)
  return (
      PhaseSpec("sensation", ticks[0], sens_in, ones, learn),
      PhaseSpec("perception", ticks[1], perc_in, ones, learn),
      PhaseSpec("integration", ticks[2], intg_in, ones, learn),
      PhaseSpec("selection", ticks[3], none_in, ones, learn, read=True, bg_gate=True),
      PhaseSpec("action", ticks[4], none_in, ones, learn, read=True, bg_gate=True),
  )


@dataclasses.dataclass(frozen=True)
class BrainConfig:
  """Everything that fixes the brain's shape and dynamics (static under jit).

  Units: times in ms; membrane quantities of the ALIF model are dimensionless
  (threshold 1); Izhikevich uses mV and its own current units.
  """

  areas: tuple[AreaSpec, ...] = SEED_AREAS
  pathways: tuple[PathwaySpec, ...] = SEED_PATHWAYS + SEED_RECURRENCE
  phases: tuple[PhaseSpec, ...] = dataclasses.field(default_factory=seed_phases)
  scale: float = 1.0
  tile: int = 128
  fan_in_tiles: int = 8
  neuron_model: Literal["alif", "izhikevich"] = "alif"
  # Token input can reach these areas (a prefix of `areas`) through a learned D x N_in
  # projection; the phase table's input gains say how strongly, phase by phase.
  input_areas: tuple[str, ...] = AREA_NAMES
  readout_area: str = "broca"
  # Further areas whose read-phase traces join the readout's features (after the readout
  # area's, in this order); each gets the readout's own e-prop signal like the readout area.
  readout_also: tuple[str, ...] = ()
  # Per-token decay of the readout's slow features. 0: none. In (0, 1): the readout also
  # reads an exponential average over tokens of the read areas' features,
  # slow <- decay * slow + (1 - decay) * features (a second, slower trace time scale kept
  # per stream in `BrainState.slow_BxNr`), so it has 2 Nr features (`readout_size`).
  readout_slow_decay: float = 0.0
  embedding_dim: int = 512
  vocab_size: int = 50257
  # ALIF dynamics.
  dt_ms: float = 5.0
  tau_mem_ms: float = 20.0
  tau_syn_ms: float = 10.0
  tau_adapt_ms: float = 200.0
  tau_trace_ms: float = 50.0
  adapt_beta: float = 0.5
  threshold: float = 1.0
  surrogate_width: float = 0.5
  # Initial weights: summed excitatory input per tick at the target rate, in threshold
  # units (see connectivity.init_tiles); inhibitory synapses are `inhibitory_scale` x stronger.
  weight_scale: float = 0.8
  inhibitory_scale: float = 2.0
  input_scale: float = 1.0
  weight_dtype: str = "bfloat16"
  # Storage dtype of the ALIF state v, i, a, tr ([B, N] each; the tick computes in float32
  # either way). "bfloat16" halves the bytes the fused tick moves for them (docs/KERNELS.md);
  # the spikes s and the per-token sums keep their dtypes. Izhikevich needs float32 (mV).
  state_dtype: Literal["float32", "bfloat16"] = "float32"
  # The two [B, N] arrays that pass between a tick's propagation and its neuron update:
  # the signed spikes q (exact +-1 in either dtype; "auto" = the weights' dtype; "int8" is
  # one byte but measured slower on an H200, the propagation converting it before its
  # tensor-core dot; bptt needs a float dtype) and the propagated current (summed in
  # float32 either way; "bfloat16" halves the bytes written by the propagation and read by
  # the neuron tick: ~3.5% of the training step at B = 2,048; the token drive, the tick's
  # other input current, is stored in it too). docs/KERNELS.md.
  spike_dtype: Literal["auto", "int8"] = "auto"
  current_dtype: Literal["float32", "bfloat16"] = "float32"
  # Operand dtype of the dense dots of the readout (features -> hidden -> logits, and their
  # gradients) and of the input projection (token drive, e-prop input gradients). The
  # weights stay float32 and every dot accumulates in float32; "bfloat16" casts both operands,
  # and the gradients' dots take the cotangent in bfloat16 too (`readout.weights_dot`; mixed
  # precision: twice the tensor-core rate of float32's TF32 on a GPU).
  readout_matmul_dtype: Literal["float32", "bfloat16"] = "float32"
  # Izhikevich (the original's regular-spiking parameters).
  izh_a: float = 0.02
  izh_b: float = 0.2
  izh_c: float = -65.0
  izh_d: float = 8.0
  izh_substep_ms: float = 0.5
  izh_current_scale: float = 10.0
  # Homeostasis target rate (spikes per tick) and band, and readout trace features.
  target_rate: float = 0.02
  implementation: Literal["xla", "pallas"] = "xla"
  # Ticks of the token's `lax.scan` unrolled into one loop iteration (`scan_unroll`):
  # 0 = auto (all ticks_per_token for a single stream on a GPU, where the loop's per-iteration
  # overhead, a predicate copied to the host, is a large part of a tick; else 1).
  tick_unroll: int = 0
  # Which Pallas event-driven kernel propagates a single stream (implementation="pallas",
  # B = 1); see `pallas.events.propagate_events_pallas`.
  events_variant: Literal["tiles", "rows", "atomic"] = "tiles"
  # implementation="pallas", ALIF, B a multiple of 16: the tick's propagation runs inside the
  # neuron tick's kernel (`ops.propagate_tick`): the current stays in registers (float32;
  # current_dtype does not apply) and is never written and read back. Exact, but measured
  # 1.4-1.7x slower than the two kernels on an H200 (docs/KERNELS.md): off by default.
  fuse_propagation: bool = False
  # implementation="pallas", B > 1: which lowering runs the block-sparse propagation
  # (`pallas.propagate.propagate`'s backend). "auto": the warp-specialised Mosaic GPU kernel
  # on a Hopper GPU from 128 streams on (1.45x faster than Triton on an H200,
  # docs/KERNELS.md session 20), else Triton. "mosaic_gpu" needs a Hopper GPU.
  propagation_backend: Literal["auto", "triton", "mosaic_gpu"] = "auto"
  # implementation="pallas": which lowering runs a token's per-synapse update
  # (`pallas.plasticity.synapse_update`'s backend). "mosaic_gpu": the factor groups' GEMMs
  # by a warp-specialised Mosaic GPU kernel (Hopper, bfloat16 factors, tile 128), the rules
  # by the Triton kernel; "triton": all in one Triton kernel; "auto": mosaic_gpu on a
  # Hopper GPU for 128 to 512 streams (measured 3.1-3.6% faster per tick at B = 256 on an
  # H200, slower at 2,048: docs/KERNELS.md, session 22), else triton.
  synapse_backend: Literal["auto", "triton", "mosaic_gpu"] = "auto"

  def __post_init__(self):
    names = [a.name for a in self.areas]
    if not names:
      raise ValueError("areas is empty; a brain needs at least one area.")
    if len(set(names)) != len(names):
      raise ValueError(f"area names must be unique, got {names}")
    for name in ("tile", "fan_in_tiles", "embedding_dim", "vocab_size"):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
    for name in ("scale", "dt_ms", "tau_mem_ms", "tau_syn_ms", "tau_adapt_ms", "tau_trace_ms"):
      value = getattr(self, name)
      if (isinstance(value, bool) or not isinstance(value, numbers.Real)
          or not math.isfinite(value) or value <= 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    if self.tile <= 0 or self.tile % 8:
      raise ValueError(f"tile must be a positive multiple of 8, got {self.tile}")
    if self.embedding_dim < 1 or self.vocab_size < 1:
      raise ValueError(f"embedding_dim and vocab_size must be >= 1, got {self.embedding_dim}, "
                       f"{self.vocab_size}")
    for a in self.areas:
      if isinstance(a.size, bool) or not isinstance(a.size, numbers.Integral) or a.size < 1:
        raise ValueError(f"area {a.name!r}: size must be an integer >= 1 (neurons at scale 1; "
                         f"rounded to whole tiles of {self.tile} after scaling), got {a.size!r}")
      if not 0 <= a.excitatory_fraction <= 1:
        raise ValueError(f"area {a.name!r}: excitatory_fraction must be in [0, 1], got "
                         f"{a.excitatory_fraction!r}")
    for p in self.pathways:
      for end in (p.source, p.target):
        if end not in names:
          raise ValueError(f"pathway {p.name} names area {end!r}, which is not one of {names}")
    for ph in self.phases:
      if len(ph.input_gain) != len(self.areas) or len(ph.learn) != len(self.areas):
        raise ValueError(f"phase {ph.name}: input_gain/learn need one entry per area ({len(self.areas)})")
      if len(ph.pathway_gain) != len(self.pathways):
        raise ValueError(f"phase {ph.name}: pathway_gain needs one entry per pathway ({len(self.pathways)})")
      if ph.ticks < 1:
        raise ValueError(f"phase {ph.name}: ticks must be >= 1, got {ph.ticks}")
    idx = sorted(names.index(a) for a in self.input_areas if a in names)
    if idx != list(range(len(self.input_areas))):
      raise ValueError(f"input_areas {self.input_areas} must be the first areas of `areas` (in order {names})")
    if isinstance(self.readout_also, str):
      raise ValueError(f"readout_also must be a tuple of area names, got {self.readout_also!r}")
    for a in self.input_areas + self.readout_areas:
      if a not in names:
        raise ValueError(f"area {a!r} (input/readout) is not one of {names}")
    if self.state_dtype not in ("float32", "bfloat16"):
      raise ValueError(f"state_dtype must be 'float32' or 'bfloat16', got {self.state_dtype!r}")
    if self.state_dtype != "float32" and self.neuron_model != "alif":
      raise ValueError(f"state_dtype={self.state_dtype!r} needs neuron_model='alif' (the "
                       f"Izhikevich membrane in mV needs float32); use state_dtype='float32'")
    if self.spike_dtype not in ("auto", "int8"):
      raise ValueError(f"spike_dtype must be 'auto' (the weights' dtype) or 'int8', got "
                       f"{self.spike_dtype!r}")
    for name in ("current_dtype", "readout_matmul_dtype"):
      if getattr(self, name) not in ("float32", "bfloat16"):
        raise ValueError(f"{name} must be 'float32' or 'bfloat16', got {getattr(self, name)!r}")
    d = self.readout_slow_decay
    if isinstance(d, bool) or not isinstance(d, numbers.Real) or not 0 <= d < 1:
      raise ValueError(f"readout_slow_decay must be a number in [0, 1) (0 = no slow readout "
                       f"features), got {d!r}")
    if len(set(self.readout_areas)) != len(self.readout_areas):
      raise ValueError(f"readout_also must be a tuple of areas other than readout_area "
                       f"{self.readout_area!r}, each once, got {self.readout_also!r}")
    targets = {p.target for p in self.pathways}
    for n in names:
      if n not in targets:
        raise ValueError(f"area {n!r} receives no pathway; add one (e.g. its recurrence)")
    if self.fan_in_tiles < 1:
      raise ValueError(f"fan_in_tiles must be >= 1, got {self.fan_in_tiles}")
    if self.neuron_model not in ("alif", "izhikevich"):
      raise ValueError(f"neuron_model must be 'alif' or 'izhikevich', got {self.neuron_model!r}")
    if self.implementation not in ("xla", "pallas"):
      raise ValueError(f"implementation must be 'xla' or 'pallas', got {self.implementation!r}")
    if (isinstance(self.tick_unroll, bool) or not isinstance(self.tick_unroll, numbers.Integral)
        or self.tick_unroll < 0):
      raise ValueError(f"tick_unroll must be an integer >= 0 (0 = auto: all ticks of a token "
                       f"when B = 1 on a GPU, else 1), got {self.tick_unroll!r}")
    if not isinstance(self.fuse_propagation, bool):
      raise ValueError(f"fuse_propagation must be True or False, got {self.fuse_propagation!r}")
    if self.propagation_backend not in PROPAGATION_BACKENDS:
      raise ValueError(f"propagation_backend must be one of {PROPAGATION_BACKENDS}, got "
                       f"{self.propagation_backend!r}")
    if self.synapse_backend not in SYNAPSE_BACKENDS:
      raise ValueError(f"synapse_backend must be one of {SYNAPSE_BACKENDS}, got "
                       f"{self.synapse_backend!r}")
    if self.events_variant not in EVENTS_VARIANTS:
      raise ValueError(f"events_variant must be one of {EVENTS_VARIANTS}, got "
                       f"{self.events_variant!r}")

  # ---- derived sizes (all static Python ints) ----
  @property
  def area_names(self) -> tuple[str, ...]:
    return tuple(a.name for a in self.areas)

  @property
  def area_sizes(self) -> tuple[int, ...]:
    """Neurons per area after scaling, rounded to whole tiles (at least one)."""
    return tuple(max(1, round(a.size * self.scale / self.tile)) * self.tile for a in self.areas)

  @property
  def area_offsets(self) -> tuple[int, ...]:
    offs, o = [], 0
    for s in self.area_sizes:
      offs.append(o)
      o += s
    return tuple(offs)

  def area_slice(self, name: str) -> slice:
    i = self.area_names.index(name)
    return slice(self.area_offsets[i], self.area_offsets[i] + self.area_sizes[i])

  @property
  def num_neurons(self) -> int:
    return sum(self.area_sizes)

  @property
  def num_blocks(self) -> int:
    return self.num_neurons // self.tile

  @property
  def num_synapses(self) -> int:
    return self.num_blocks * self.fan_in_tiles * self.tile * self.tile

  @property
  def input_size(self) -> int:
    """Neurons that receive the token drive: the input areas must be the first areas."""
    return sum(self.area_sizes[self.area_names.index(a)] for a in self.input_areas)

  @property
  def readout_areas(self) -> tuple[str, ...]:
    """The areas the readout reads: `readout_area`, then `readout_also`."""
    return (self.readout_area,) + tuple(self.readout_also)

  @property
  def read_neurons(self) -> int:
    """Nr: every neuron of the read areas."""
    return sum(self.area_sizes[self.area_names.index(a)] for a in self.readout_areas)

  @property
  def readout_size(self) -> int:
    """The readout's features: Nr, or 2 Nr with slow features (`readout_slow_decay`)."""
    return self.read_neurons * (2 if self.readout_slow_decay else 1)

  @property
  def ticks_per_token(self) -> int:
    return sum(p.ticks for p in self.phases)

  @property
  def max_phase_ticks(self) -> int:
    return max(p.ticks for p in self.phases)

  def scan_unroll(self, batch: int, platform: str = "gpu") -> int:
    """The `unroll` of the tick scan for `batch` streams on `platform` (the one place it
    is chosen). Auto unrolls all ticks only for one stream on a GPU, where each loop
    iteration costs a host round trip and kernel launches; on a CPU it would only make
    the compile longer."""
    if self.tick_unroll:
      return min(self.tick_unroll, self.ticks_per_token)
    return self.ticks_per_token if batch == 1 and platform == "gpu" else 1

  def decay(self, tau_ms: float) -> float:
    return math.exp(-self.dt_ms / tau_ms)

  def replace(self, **kw) -> "BrainConfig":
    return dataclasses.replace(self, **kw)


def tiny_config(**overrides) -> BrainConfig:
  """A few-thousand-neuron brain for tests: scale 1/32 with 16-neuron tiles (2,496 neurons)."""
  kw = dict(scale=1 / 32, tile=16, fan_in_tiles=8, embedding_dim=64, vocab_size=257)
  kw.update(overrides)
  return BrainConfig(**kw)
