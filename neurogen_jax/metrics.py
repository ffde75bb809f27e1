"""Evaluation metrics shared by the baselines and the neural model.

Pure Python, no JAX: the harness and the baselines both import this.

Conventions (the same for every model in a results table):

* A model's cost on a text is the total negative log-likelihood of the text's
  token sequence, in nats: ``total_nats = -sum_t ln p(x_t | x_<t)``.
* Bits per byte = ``total_nats / ln 2 / n_bytes`` where ``n_bytes`` is the
  number of UTF-8 bytes of the text (``len(text.encode("utf-8"))``). It is
  therefore independent of the tokenizer, and a byte-level compressor such as
  xz can be put in the same table (its bits are divided by the same bytes).
* Nats per token = ``total_nats / n_tokens`` with ``n_tokens`` the number of
  token predictions that were scored (see ``neurogen_jax.baselines`` for which
  positions are scored).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence

LN2 = math.log(2.0)


def nats_to_bits(nats: float) -> float:
    """Converts an amount of information from nats to bits (÷ ln 2)."""
    return float(nats) / LN2


def bits_to_nats(bits: float) -> float:
    """Converts an amount of information from bits to nats (× ln 2)."""
    return float(bits) * LN2


def bits_per_byte(total_nats: float, n_bytes: int) -> float:
    """Total cost in nats of a text → bits per UTF-8 byte of that text.

    Args:
      total_nats: total negative log-likelihood (nats, ≥ 0) of the whole text.
      n_bytes: number of UTF-8 bytes of the text (> 0).
    """
    if n_bytes <= 0:
        raise ValueError(f"n_bytes must be positive, got {n_bytes}")
    return nats_to_bits(total_nats) / n_bytes


def utf8_len(text: str | bytes) -> int:
    """Number of UTF-8 bytes of ``text`` (bytes are taken as already encoded)."""
    if isinstance(text, (bytes, bytearray, memoryview)):
        return len(text)
    return len(text.encode("utf-8"))


@dataclasses.dataclass(frozen=True)
class EvalResult:
    """One row of an evaluation table.

    Attributes:
      name: model name, e.g. ``"KN 5-gram"``.
      nats_per_token: total nats / n_tokens.
      bits_per_byte: total nats / ln 2 / n_bytes.
      top1_accuracy: fraction of scored tokens whose argmax prediction is the
        actual token, or None where it does not apply (e.g. xz).
      n_tokens: number of scored token predictions.
      n_bytes: UTF-8 bytes of the evaluated text.
    """

    name: str
    nats_per_token: float
    bits_per_byte: float
    top1_accuracy: float | None
    n_tokens: int
    n_bytes: int

    @property
    def total_nats(self) -> float:
        return self.nats_per_token * self.n_tokens

    @classmethod
    def from_total(
        cls,
        name: str,
        total_nats: float,
        n_tokens: int,
        n_bytes: int,
        top1_accuracy: float | None = None,
    ) -> "EvalResult":
        """Builds a row from a total cost in nats."""
        if n_tokens <= 0:
            raise ValueError(f"n_tokens must be positive, got {n_tokens}")
        return cls(
            name=name,
            nats_per_token=float(total_nats) / n_tokens,
            bits_per_byte=bits_per_byte(total_nats, n_bytes),
            top1_accuracy=None if top1_accuracy is None else float(top1_accuracy),
            n_tokens=int(n_tokens),
            n_bytes=int(n_bytes),
        )


_HEADERS = ("model", "bits/byte", "nats/token", "top-1", "tokens", "bytes")


def format_table(results: Iterable[EvalResult]) -> str:
    """Aligned plain-text table of results (one row each), returned as a string.

    Columns: model, bits/byte, nats/token, top-1 accuracy (``-`` when None),
    scored tokens, bytes.
    """
    rows: list[Sequence[str]] = [_HEADERS]
    for r in results:
        rows.append(
            (
                r.name,
                f"{r.bits_per_byte:.4f}",
                f"{r.nats_per_token:.4f}",
                "-" if r.top1_accuracy is None else f"{r.top1_accuracy:.4f}",
                str(r.n_tokens),
                str(r.n_bytes),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(_HEADERS))]
    lines = []
    for j, row in enumerate(rows):
        cells = [row[0].ljust(widths[0])]
        cells += [c.rjust(w) for c, w in zip(row[1:], widths[1:])]
        lines.append("  ".join(cells).rstrip())
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)

