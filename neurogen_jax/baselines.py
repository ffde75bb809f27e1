"""Count-based and compression baselines for held-out bits per byte.

Pure numpy / stdlib (no JAX): unigram, interpolated modified Kneser–Ney
n-grams of any order ≥ 2, and xz given the training text.

Scoring convention (the neural model's evaluation follows the same one)
-----------------------------------------------------------------------
The held-out token ids ``y[0..L-1]`` of the test text are scored as ONE
continuous sequence (no resets at document or window boundaries):

* ``model.log_prob(y)`` / ``model.token_log_probs(y)`` score the positions
  ``t = 1..L-1``: token ``y[t]`` is predicted from ``y[:t]`` (as the neural
  model predicts token t+1 from tokens ≤ t). ``model.n_scored(y) == L - 1``.
* To cover the whole text, ``run_baselines`` (and the neural evaluation) add
  the cost of the first token ``y[0]`` under the add-one smoothed
  ``UnigramModel`` fitted on the same training ids — the same cost for every
  model in the table. A table row therefore has ``n_tokens == L`` and
  ``total_nats = -ln p_unigram(y[0]) - sum_{t=1}^{L-1} ln p_model(y[t] | y[:t])``.
* ``bits_per_byte = total_nats / ln 2 / len(test_text.encode("utf-8"))``;
  ``nats_per_token = total_nats / L``; top-1 accuracy over the same ``L``
  predictions (the first one is the unigram's argmax).
* xz: ``8 * (len(xz(train + test)) - len(xz(train)))`` bits over the same
  bytes (its "nats per token" is that total in nats divided by ``L``).

Kneser–Ney variant
------------------
Interpolated *modified* Kneser–Ney (Chen & Goodman 1998, three discounts
D1, D2, D3+ per order estimated from count-of-counts; ``modified=False`` gives
plain interpolated KN with one discount ``D = n1 / (n1 + 2 n2)`` per order):

    p_k(w | h) = (c_k(h w) - D_k(c_k(h w))) / S_k(h) + gamma_k(h) p_{k-1}(w | h')
    gamma_k(h) = sum_w D_k(c_k(h w)) / S_k(h),    S_k(h) = sum_w c_k(h w)

where ``h'`` drops the oldest token of ``h``, ``c_n`` are raw counts at the
highest order n, and ``c_k`` for k < n are continuation counts
``N1+(• h w)`` (number of distinct tokens seen before the k-gram). The order-1
level interpolates with the uniform distribution ``1/V``, so every token of the
vocabulary gets p > 0. When a context ``h`` was never seen (or has
``S_k(h) = 0``) the level is skipped: ``p_k = p_{k-1}``. At the start of a
sequence (t < n-1) the highest order usable is t+1 (its counts are the
continuation counts of that order). The training ids are one stream: n-grams
cross document boundaries, as the neural model's packed streams do.

Implementation: n-grams are nodes of a trie encoded with int64 keys
``parent_node_id * V + token`` per order, kept sorted (``np.unique``) and
looked up with ``np.searchsorted``: fitting and scoring are vectorized numpy.
"""

from __future__ import annotations

import lzma
import math
import time
from collections.abc import Sequence

import numpy as np

from neurogen_jax.metrics import EvalResult, utf8_len

XZ_PRESET_9E = 9 | lzma.PRESET_EXTREME


def _as_ids(ids, vocab_size: int) -> np.ndarray:
    x = np.asarray(ids)
    if x.ndim != 1:
        raise ValueError(f"expected a 1-D sequence of token ids, got shape {x.shape}")
    if x.size and not np.issubdtype(x.dtype, np.integer):
        raise ValueError(f"token ids must be integers, got dtype {x.dtype}")
    x = x.astype(np.int64, copy=False)
    if x.size and (x.min() < 0 or x.max() >= vocab_size):
        raise ValueError(
            f"token ids must lie in [0, {vocab_size}), got [{x.min()}, {x.max()}]"
        )
    return x


def _gather(arr: np.ndarray, idx: np.ndarray, fill: float = 0.0) -> np.ndarray:
    """arr[idx] where idx >= 0, ``fill`` where idx == -1 (arr may be empty)."""
    if arr.size == 0:
        return np.full(idx.shape, fill, np.float64)
    return np.where(idx >= 0, arr[np.maximum(idx, 0)], fill)


# ----------------------------------------------------------------------------
# Unigram
# ----------------------------------------------------------------------------


class UnigramModel:
    """Add-one (Laplace) smoothed unigram: p(w) = (c(w) + 1) / (T + V)."""

    def __init__(self, vocab_size: int):
        if vocab_size < 1:
            raise ValueError("vocab_size must be ≥ 1")
        self.vocab_size = int(vocab_size)
        self.counts = np.zeros(self.vocab_size, np.int64)
        self._logp = np.full(self.vocab_size, -math.log(self.vocab_size))

    def fit(self, train_ids) -> "UnigramModel":
        x = _as_ids(train_ids, self.vocab_size)
        self.counts = np.bincount(x, minlength=self.vocab_size).astype(np.int64)
        p = (self.counts + 1.0) / (x.size + self.vocab_size)
        self._logp = np.log(p)
        return self

    def prob_vector(self, context=()) -> np.ndarray:
        """p(· | context) over the V tokens (the context is ignored)."""
        return np.exp(self._logp)

    def token_log_prob(self, token: int) -> float:
        """ln p(token)."""
        return float(self._logp[int(token)])

    def token_log_probs(self, ids) -> np.ndarray:
        """ln p(y[t]) for t = 1..L-1 (length L-1, float64)."""
        y = _as_ids(ids, self.vocab_size)
        return self._logp[y[1:]]

    def n_scored(self, ids) -> int:
        return max(len(ids) - 1, 0)

    def log_prob(self, ids) -> float:
        """Total ln p (≤ 0, nats) of positions 1..L-1."""
        return float(self.token_log_probs(ids).sum())

    def nll(self, ids) -> float:
        """Total negative log-likelihood (≥ 0, nats) of positions 1..L-1."""
        return -self.log_prob(ids)

    def nats_per_token(self, ids) -> float:
        return self.nll(ids) / self.n_scored(ids)

    def argmax(self) -> int:
        return int(np.argmax(self.counts))

    def top1_hits(self, ids) -> np.ndarray:
        """bool per position t = 1..L-1: is the argmax the actual token?"""
        y = _as_ids(ids, self.vocab_size)
        return y[1:] == self.argmax()


# ----------------------------------------------------------------------------
# Kneser–Ney
# ----------------------------------------------------------------------------


def _discounts(counts: np.ndarray, modified: bool) -> np.ndarray:
    """Discounts D[c] for c = 0, 1, 2, 3+ (D[0] = 0) from count-of-counts.

    Clamped into [0.05, c] (so D_c ≤ c keeps numerators ≥ 0, and D > 0 keeps
    every token's probability > 0 through the uniform base).
    """
    c = counts[counts > 0]
    n = [int(np.count_nonzero(c == i)) for i in range(5)]  # n[1..4]
    y = n[1] / (n[1] + 2 * n[2]) if (n[1] + 2 * n[2]) > 0 else 0.5
    d = np.zeros(4)
    if not modified:
        d[1:] = y
    else:
        d[1] = 1.0 - 2.0 * y * n[2] / n[1] if n[1] > 0 else y
        d[2] = 2.0 - 3.0 * y * n[3] / n[2] if n[2] > 0 else 2.0 * y
        d[3] = 3.0 - 4.0 * y * n[4] / n[3] if n[3] > 0 else 3.0 * y
    for i in (1, 2, 3):
        d[i] = float(np.clip(d[i], 0.05, float(i)))
    return d


class KneserNeyModel:
    """Interpolated (modified by default) Kneser–Ney n-gram model, order ≥ 2.

    See the module docstring for the exact formulae and conventions.

    Attributes after ``fit``:
      discounts: list, ``discounts[k]`` = array [0, D1, D2, D3+] for order k.
      fit_seconds: wall time of the last ``fit``.
    """

    def __init__(self, vocab_size: int, order: int = 3, modified: bool = True):
        if order < 2:
            raise ValueError("order must be ≥ 2 (use UnigramModel for order 1)")
        if vocab_size < 1:
            raise ValueError("vocab_size must be ≥ 1")
        self.vocab_size = int(vocab_size)
        self.order = int(order)
        self.modified = bool(modified)
        self._fitted = False

    # -- fitting -------------------------------------------------------------

    def fit(self, train_ids) -> "KneserNeyModel":
        t0 = time.perf_counter()
        V, n = self.vocab_size, self.order
        x = _as_ids(train_ids, V)
        T = x.size
        keys = [np.zeros(1, np.int64)]  # level 0: the root (empty n-gram)
        pos_ids = [np.zeros(T + 1, np.int64)]  # pos_ids[k][i]: node of x[i:i+k]
        first = [np.zeros(1, np.int64)]  # first occurrence of each node
        raw = [np.array([T], np.int64)]
        for k in range(1, n + 1):
            m = max(T - k + 1, 0)
            key = pos_ids[k - 1][:m] * V + x[k - 1 : k - 1 + m]
            uniq, idx, inv, cnt = np.unique(
                key, return_index=True, return_inverse=True, return_counts=True
            )
            keys.append(uniq.astype(np.int64))
            first.append(idx.astype(np.int64))
            pos_ids.append(inv.reshape(-1).astype(np.int64))
            raw.append(cnt.astype(np.int64))

        self._keys = keys
        self._num: list[np.ndarray] = [np.zeros(0)]  # per node: c - D(c)
        self._S: list[np.ndarray] = [np.zeros(0)]  # per context node: S_k(h)
        self._gamma: list[np.ndarray] = [np.zeros(0)]  # per context node
        self.discounts: list[np.ndarray] = [np.zeros(4)]
        for k in range(1, n + 1):
            if k == n:
                c = raw[k]
            else:
                # N1+(• g): number of distinct (k+1)-grams whose suffix is g.
                suffix = pos_ids[k][first[k + 1] + 1]
                c = np.bincount(suffix, minlength=keys[k].size).astype(np.int64)
            d = _discounts(c, self.modified)
            dc = d[np.minimum(c, 3)]  # D(0) = 0
            parent = keys[k] // V
            n_ctx = keys[k - 1].size
            # (astype: bincount of an empty array returns int64 even with weights)
            S = np.bincount(parent, weights=c.astype(np.float64), minlength=n_ctx).astype(np.float64)
            G = np.bincount(parent, weights=dc, minlength=n_ctx).astype(np.float64)
            gamma = np.divide(G, S, out=np.zeros_like(G), where=S > 0)
            self._num.append(c.astype(np.float64) - dc)
            self._S.append(S)
            self._gamma.append(gamma)
            self.discounts.append(d)

        # Dense order-1 distribution (continuation unigram ⊕ uniform).
        S1, g1 = self._S[1][0], self._gamma[1][0]
        p1 = np.zeros(V)
        if S1 > 0:
            p1[keys[1]] = self._num[1] / S1
            p1 += g1 / V
        else:
            p1[:] = 1.0 / V
        self._p1 = p1
        self.n_train = T
        self._fitted = True
        self.fit_seconds = time.perf_counter() - t0
        return self

    def _check(self):
        if not self._fitted:
            raise RuntimeError("call fit() first")

    # -- trie walk -----------------------------------------------------------

    def _walk(self, y: np.ndarray) -> list[np.ndarray]:
        """ids[k][i] = node id of y[i:i+k] at order k, or -1 if unseen."""
        V, L = self.vocab_size, y.size
        ids = [np.zeros(L + 1, np.int64)]
        for k in range(1, self.order + 1):
            m = max(L - k + 1, 0)
            parent = ids[k - 1][:m]
            key = parent * V + y[k - 1 : k - 1 + m]
            kk = self._keys[k]
            if kk.size == 0:
                ids.append(np.full(m, -1, np.int64))
                continue
            j = np.searchsorted(kk, key)
            jc = np.minimum(j, kk.size - 1)
            found = (parent >= 0) & (j < kk.size) & (kk[jc] == key)
            ids.append(np.where(found, jc, -1).astype(np.int64))
        return ids

    # -- scoring -------------------------------------------------------------

    def token_log_probs(self, ids) -> np.ndarray:
        """ln p(y[t] | y[:t]) for t = 1..L-1 (length L-1, float64)."""
        self._check()
        y = _as_ids(ids, self.vocab_size)
        L = y.size
        if L < 2:
            return np.zeros(0)
        w = self._walk(y)
        t = np.arange(1, L)
        p = self._p1[y[t]]
        for k in range(2, self.order + 1):
            sel = t >= k - 1
            if not sel.any():
                break
            s = t[sel] - (k - 1)
            ctx = w[k - 1][s]
            S = _gather(self._S[k], ctx)
            ok = S > 0
            numer = _gather(self._num[k], w[k][s])
            gam = _gather(self._gamma[k], ctx)
            lower = p[sel]
            p[sel] = np.where(
                ok, numer / np.where(ok, S, 1.0) + gam * lower, lower
            )
        return np.log(p)

    def n_scored(self, ids) -> int:
        return max(len(ids) - 1, 0)

    def log_prob(self, ids) -> float:
        """Total ln p (≤ 0, nats) of positions 1..L-1 given their prefixes."""
        return float(self.token_log_probs(ids).sum())

    def nll(self, ids) -> float:
        """Total negative log-likelihood (≥ 0, nats) of positions 1..L-1."""
        return -self.log_prob(ids)

    def nats_per_token(self, ids) -> float:
        return self.nll(ids) / self.n_scored(ids)

    # -- full distributions ----------------------------------------------------

    def _dense(self, ctx: list[np.ndarray]) -> np.ndarray:
        """(B, V) distributions; ctx[k] (k = 2..n) = context node id (order
        k-1) per row, -1 where that order is unseen or unavailable."""
        V = self.vocab_size
        B = ctx[2].size if self.order >= 2 else 1
        P = np.broadcast_to(self._p1, (B, V)).copy()
        for k in range(2, self.order + 1):
            c = ctx[k]
            S = _gather(self._S[k], c)
            rows = np.nonzero(S > 0)[0]
            if rows.size == 0:
                continue
            cr = c[rows]
            P[rows] *= self._gamma[k][cr][:, None]
            kk = self._keys[k]
            lo = np.searchsorted(kk, cr * V)
            hi = np.searchsorted(kk, (cr + 1) * V)
            lens = hi - lo
            tot = int(lens.sum())
            if tot == 0:
                continue
            rep = np.repeat(np.arange(rows.size), lens)
            offs = np.cumsum(lens) - lens
            idx = np.arange(tot) - np.repeat(offs, lens) + np.repeat(lo, lens)
            col = kk[idx] - cr[rep] * V
            P[rows[rep], col] += self._num[k][idx] / S[rows][rep]
        return P

    def prob_vector(self, context: Sequence[int] = ()) -> np.ndarray:
        """p(· | context) over all V tokens (uses the last order-1 tokens)."""
        self._check()
        c = _as_ids(np.asarray(list(context), dtype=np.int64), self.vocab_size)
        c = c[max(c.size - (self.order - 1), 0) :]
        m = c.size
        w = self._walk(c)
        ctx = [None, None]
        for k in range(2, self.order + 1):
            ok = k - 1 <= m
            ctx.append(np.array([w[k - 1][m - k + 1] if ok else -1], np.int64))
        return self._dense(ctx)[0]

    def top1_hits(self, ids, chunk: int = 256) -> np.ndarray:
        """bool per position t = 1..L-1: is argmax_w p(w | y[:t]) == y[t]?"""
        self._check()
        y = _as_ids(ids, self.vocab_size)
        L = y.size
        if L < 2:
            return np.zeros(0, bool)
        w = self._walk(y)
        t_all = np.arange(1, L)
        hits = np.empty(L - 1, bool)
        for a in range(0, L - 1, chunk):
            t = t_all[a : a + chunk]
            ctx = [None, None]
            for k in range(2, self.order + 1):
                s = t - (k - 1)
                wk = w[k - 1]
                if wk.size == 0:
                    ctx.append(np.full(t.shape, -1, np.int64))
                else:
                    ctx.append(np.where(s >= 0, wk[np.minimum(np.maximum(s, 0), wk.size - 1)], -1))
            P = self._dense(ctx)
            hits[a : a + chunk] = P.argmax(axis=1) == y[t]
        return hits


# ----------------------------------------------------------------------------
# xz
# ----------------------------------------------------------------------------


def _to_bytes(text: str | bytes) -> bytes:
    if isinstance(text, str):
        return text.encode("utf-8")
    return bytes(text)


def xz_bits(text: str | bytes, preset: int = XZ_PRESET_9E) -> int:
    """Unconditional size in bits of ``xz`` (container format) of ``text``."""
    return 8 * len(lzma.compress(_to_bytes(text), format=lzma.FORMAT_XZ, preset=preset))


def xz_conditional_bits(
    train_text: str | bytes,
    test_text: str | bytes,
    preset: int = XZ_PRESET_9E,
    max_train_bytes: int | None = None,
) -> int:
    """Bits for ``test_text`` given ``train_text`` under xz:
    ``8 * (len(xz(train + test)) - len(xz(train)))``.

    Strings are UTF-8 encoded. The default preset is ``9 | PRESET_EXTREME``
    ("xz -9e", 64 MiB dictionary: training text beyond the last 64 MiB cannot
    be referenced anyway). ``max_train_bytes`` keeps only the LAST N bytes of
    the training text (the part adjacent to the test text); None = all of it.
    Cost: two compressions of ~|train| bytes; measured on 5 MB of training
    text + 300 kB of test text at -9e: 6.3 s in all, peak RSS ~170 MB. The
    container overhead (headers, index, padding to 4 bytes) cancels up to a
    few bytes.
    """
    tr = _to_bytes(train_text)
    te = _to_bytes(test_text)
    if max_train_bytes is not None:
        if max_train_bytes < 0:
            raise ValueError("max_train_bytes must be ≥ 0 or None")
        tr = tr[len(tr) - min(max_train_bytes, len(tr)) :]
    both = lzma.compress(tr + te, format=lzma.FORMAT_XZ, preset=preset)
    base = lzma.compress(tr, format=lzma.FORMAT_XZ, preset=preset)
    return 8 * (len(both) - len(base))


# ----------------------------------------------------------------------------
# The baseline table
# ----------------------------------------------------------------------------


def _ordinal(n: int) -> str:
    return {2: "bigram", 3: "trigram"}.get(n, f"{n}-gram")


def run_baselines(
    train_ids,
    test_ids,
    test_text: str | bytes,
    train_text: str | bytes | None,
    vocab_size: int,
    orders: Sequence[int] = (2, 3, 5),
    *,
    modified: bool = True,
    compute_top1: bool = True,
    xz_preset: int = XZ_PRESET_9E,
    xz_max_train_bytes: int | None = None,
    verbose: bool = False,
) -> list[EvalResult]:
    """Unigram, KN n-grams of each order in ``orders``, and xz given training.

    Every token model scores all L test tokens (the first by the add-one
    unigram, see the module docstring); bits per byte are over the UTF-8 bytes
    of ``test_text``. The xz row is skipped when ``train_text`` is None.
    Returns rows in order: unigram, KN orders..., xz.
    """
    V = int(vocab_size)
    tr = _as_ids(train_ids, V)
    te = _as_ids(test_ids, V)
    L = te.size
    if L < 1:
        raise ValueError("test_ids is empty")
    n_bytes = utf8_len(test_text)
    results = []

    def log(msg):
        if verbose:
            print(msg, flush=True)

    uni = UnigramModel(V).fit(tr)
    first_nats = -uni.token_log_prob(int(te[0]))
    first_hit = bool(te[0] == uni.argmax())
    total = first_nats + uni.nll(te)
    top1 = None
    if compute_top1:
        top1 = (first_hit + int(uni.top1_hits(te).sum())) / L
    results.append(EvalResult.from_total("unigram (add-one)", total, L, n_bytes, top1))
    log(f"unigram: {results[-1].bits_per_byte:.4f} bits/byte")

    for n in orders:
        t0 = time.perf_counter()
        kn = KneserNeyModel(V, order=int(n), modified=modified).fit(tr)
        t1 = time.perf_counter()
        total = first_nats + kn.nll(te)
        t2 = time.perf_counter()
        top1 = None
        if compute_top1:
            top1 = (first_hit + int(kn.top1_hits(te).sum())) / L
        kind = "KN" if modified else "plain KN"
        name = f"{kind} {_ordinal(int(n))}"
        results.append(EvalResult.from_total(name, total, L, n_bytes, top1))
        log(
            f"{results[-1].name}: {results[-1].bits_per_byte:.4f} bits/byte "
            f"(fit {t1 - t0:.1f}s, score {t2 - t1:.1f}s, top1 {time.perf_counter() - t2:.1f}s)"
        )

    if train_text is not None:
        t0 = time.perf_counter()
        bits = xz_conditional_bits(train_text, test_text, xz_preset, xz_max_train_bytes)
        name = "xz -9e | train" if xz_preset == XZ_PRESET_9E else f"xz preset {xz_preset} | train"
        results.append(EvalResult.from_total(name, bits * math.log(2.0), L, n_bytes, None))
        log(f"xz: {results[-1].bits_per_byte:.4f} bits/byte ({time.perf_counter() - t0:.1f}s)")
    return results
