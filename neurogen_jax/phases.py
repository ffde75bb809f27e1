"""The five-phase table of one cognitive cycle, as arrays that `lax.scan` walks over.

Sensation -> Perception -> Integration -> Selection -> Action all happen inside ONE
token (the original spread the phases over tokens). Each row says how many ticks the
phase lasts, how strongly the token drive enters each area, each tile's pathway gain,
which areas learn, whether Broca is read and whether the basal ganglia gate Broca.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from neurogen_jax.config import BrainConfig
from neurogen_jax.connectivity import Connectivity, pathway_gains


class PhaseTable(NamedTuple):
  """One row per phase (leading axis P = 5).

  ticks_P: int32 ticks of the phase.
  input_gain_PxNin: token-drive gain of each input neuron.
  gain_PxRxK: gain of each tile (its pathway's gain x the phase's multiplier).
  learn_PxN: 1 where the neuron's area accumulates eligibility in this phase.
  read_P: 1 in the phase(s) whose Broca traces form the readout features.
  bg_gate_P: 1 where the basal-ganglia Go/No-Go gate scales Broca's input.
  """

  ticks_P: jax.Array
  input_gain_PxNin: jax.Array
  gain_PxRxK: jax.Array
  learn_PxN: jax.Array
  read_P: jax.Array
  bg_gate_P: jax.Array


def phase_table(config: BrainConfig, conn: Connectivity) -> PhaseTable:
  """Builds the table from the config and the tile -> pathway map (cheap; traced in jit)."""
  phases = config.phases
  input_gain_PxA = jnp.asarray([ph.input_gain for ph in phases], jnp.float32)
  learn_PxA = jnp.asarray([ph.learn for ph in phases], jnp.float32)
  n_in = config.input_size
  gains_PxW = jnp.asarray(pathway_gains(config))
  return PhaseTable(
      ticks_P=jnp.asarray([ph.ticks for ph in phases], jnp.int32),
      input_gain_PxNin=input_gain_PxA[:, conn.area_N[:n_in]],
      gain_PxRxK=gains_PxW[:, conn.pathway_RxK],
      learn_PxN=learn_PxA[:, conn.area_N],
      read_P=jnp.asarray([float(ph.read) for ph in phases], jnp.float32),
      bg_gate_P=jnp.asarray([float(ph.bg_gate) for ph in phases], jnp.float32),
  )


def phase_of_tick(config: BrainConfig) -> np.ndarray:
  """[ticks_per_token] phase index of each tick (for plots and rasters)."""
  return np.repeat(np.arange(len(config.phases)), [ph.ticks for ph in config.phases])
