"""Tests for neurogen_jax.baselines and neurogen_jax.metrics (numpy only)."""

from __future__ import annotations

import collections
import math

import numpy as np
import pytest

from neurogen_jax import baselines as bl
from neurogen_jax import metrics as mt

LN2 = math.log(2.0)


# ----------------------------------------------------------------------------
# metrics
# ----------------------------------------------------------------------------


def test_bits_per_byte_golden():
    assert mt.nats_to_bits(LN2) == pytest.approx(1.0, abs=1e-15)
    assert mt.bits_to_nats(1.0) == pytest.approx(LN2, abs=1e-15)
    assert mt.bits_per_byte(8 * LN2, 1) == pytest.approx(8.0, abs=1e-12)
    assert mt.bits_per_byte(100.0, 50) == pytest.approx(2.8853900817779268, abs=1e-12)
    assert mt.bits_per_byte(0.0, 7) == 0.0
    # 1,000 tokens at ln(4096) nats each over 4,000 bytes = 12 bits/token / 4.
    assert mt.bits_per_byte(1000 * math.log(4096), 4000) == pytest.approx(3.0, abs=1e-12)
    with pytest.raises(ValueError):
        mt.bits_per_byte(1.0, 0)
    assert mt.utf8_len("héllo") == 6
    assert mt.utf8_len(b"abc") == 3


def test_eval_result_and_table():
    r = mt.EvalResult.from_total("KN 5-gram", total_nats=200 * LN2, n_tokens=100, n_bytes=50,
                                 top1_accuracy=0.25)
    assert r.bits_per_byte == pytest.approx(4.0)
    assert r.nats_per_token == pytest.approx(2 * LN2)
    assert r.total_nats == pytest.approx(200 * LN2)
    x = mt.EvalResult.from_total("xz -9e | train", 10.0, 100, 50, None)
    table = mt.format_table([r, x])
    lines = table.splitlines()
    assert len(lines) == 4
    assert "bits/byte" in lines[0] and "4.0000" in lines[2] and "-" in lines[3]
    # Numeric columns right-aligned: rows end at the same column.
    assert len(lines[2]) == len(lines[3]) == len(lines[0])


# ----------------------------------------------------------------------------
# A straightforward dict-based reference interpolated (modified) KN
# ----------------------------------------------------------------------------


def _ref_discounts(counts, modified):
    cc = collections.Counter(c for c in counts.values() if c > 0)
    n1, n2, n3, n4 = (cc.get(i, 0) for i in (1, 2, 3, 4))
    y = n1 / (n1 + 2 * n2) if n1 + 2 * n2 > 0 else 0.5
    if modified:
        d1 = 1 - 2 * y * n2 / n1 if n1 else y
        d2 = 2 - 3 * y * n3 / n2 if n2 else 2 * y
        d3 = 3 - 4 * y * n4 / n3 if n3 else 3 * y
    else:
        d1 = d2 = d3 = y
    return [0.0] + [min(max(d, 0.05), float(i)) for i, d in zip((1, 2, 3), (d1, d2, d3))]


class RefKN:
    def __init__(self, train, V, n, modified=True):
        self.V, self.n = V, n
        x = [int(t) for t in train]
        self.c = {}
        for k in range(1, n + 1):
            grams = [tuple(x[i : i + k]) for i in range(len(x) - k + 1)]
            if k == n:
                self.c[k] = collections.Counter(grams)
            else:
                left = collections.defaultdict(set)
                for i in range(1, len(x) - k + 1):
                    left[tuple(x[i : i + k])].add(x[i - 1])
                self.c[k] = {g: len(s) for g, s in left.items()}
        self.d = {k: _ref_discounts(self.c[k], modified) for k in self.c}

    def p(self, h, w):
        h = tuple(int(t) for t in h)[-(self.n - 1) :] if self.n > 1 else ()
        return self._p(h, int(w))

    def _p(self, h, w):
        k = len(h) + 1
        lower = 1.0 / self.V if k == 1 else self._p(h[1:], w)
        ck = self.c[k]
        kids = {g: c for g, c in ck.items() if g[:-1] == h and c > 0}
        S = sum(kids.values())
        if S == 0:
            return lower
        D = self.d[k]
        gamma = sum(D[min(c, 3)] for c in kids.values()) / S
        c = kids.get(h + (w,), 0)
        return (c - D[min(c, 3)]) / S + gamma * lower


@pytest.mark.parametrize("order", [2, 3, 4])
@pytest.mark.parametrize("modified", [True, False])
def test_kn_matches_reference(order, modified):
    rng = np.random.default_rng(order + 10 * modified)
    V = 12
    # Low-entropy training stream (repeated motifs) so counts 1, 2, 3, 4+ occur.
    motifs = [rng.integers(0, 8, rng.integers(2, 5)) for _ in range(6)]
    train = np.concatenate([motifs[i] for i in rng.integers(0, 6, 120)])
    train[rng.random(train.size) < 0.1] = rng.integers(0, 10)
    m = bl.KneserNeyModel(V, order=order, modified=modified).fit(train)
    ref = RefKN(train, V, order, modified)
    for k in range(1, order + 1):
        np.testing.assert_allclose(m.discounts[k], ref.d[k], rtol=0, atol=1e-12)
    contexts = [(), (3,), tuple(train[5:9]), tuple(train[40:40 + order - 1]), (11, 10), (0, 11, 1)]
    contexts += [tuple(rng.integers(0, V, rng.integers(0, order + 2))) for _ in range(6)]
    for h in contexts:
        pv = m.prob_vector(h)
        expect = np.array([ref.p(h, w) for w in range(V)])
        np.testing.assert_allclose(pv, expect, rtol=0, atol=1e-12)
    # The vectorized scorer agrees with the reference token by token.
    y = np.concatenate([train[10:30], rng.integers(0, V, 15), train[60:70]])
    lp = m.token_log_probs(y)
    expect = np.log([ref.p(y[:t], y[t]) for t in range(1, y.size)])
    np.testing.assert_allclose(lp, expect, rtol=0, atol=1e-12)


# ----------------------------------------------------------------------------
# Normalisation
# ----------------------------------------------------------------------------


def _random_contexts(rng, V, n_ctx, train, max_len=8):
    out = [()]
    for _ in range(n_ctx):
        L = int(rng.integers(0, max_len + 1))
        if rng.random() < 0.5 and train.size > L:  # seen context
            s = int(rng.integers(0, train.size - L))
            out.append(tuple(train[s : s + L]))
        else:  # random, mostly unseen, incl. tokens never seen in training
            out.append(tuple(rng.integers(0, V, L)))
    return out


def test_unigram_normalised_and_laplace():
    rng = np.random.default_rng(0)
    V = 100
    train = rng.integers(0, 60, 5000)  # tokens 60..99 never seen
    u = bl.UnigramModel(V).fit(train)
    for h in _random_contexts(rng, V, 5, train):
        p = u.prob_vector(h)
        assert abs(p.sum() - 1.0) < 1e-9
        assert p.min() > 0
    c = np.bincount(train, minlength=V)
    assert u.token_log_prob(99) == pytest.approx(math.log(1 / (5000 + V)))
    assert u.token_log_prob(3) == pytest.approx(math.log((c[3] + 1) / (5000 + V)))
    y = train[:50]
    assert u.n_scored(y) == 49
    assert u.log_prob(y) == pytest.approx(sum(u.token_log_prob(t) for t in y[1:]))
    assert u.nll(y) == pytest.approx(-u.log_prob(y))


@pytest.mark.parametrize("order", [2, 3, 5])
@pytest.mark.parametrize("modified", [True, False])
def test_kn_normalised(order, modified):
    rng = np.random.default_rng(order)
    V = 300
    # Zipfian stream over the first 200 tokens only: 100 tokens never seen.
    r = np.arange(1, 201)
    p = r**-1.1 / np.sum(r**-1.1)
    train = rng.choice(200, size=20000, p=p)
    m = bl.KneserNeyModel(V, order=order, modified=modified).fit(train)
    for h in _random_contexts(rng, V, 40, train):
        pv = m.prob_vector(h)
        assert pv.shape == (V,)
        assert abs(pv.sum() - 1.0) < 1e-9, (h, pv.sum())
        assert pv.min() > 0
    # Scoring path == full-vector path.
    y = np.concatenate([train[:30], rng.integers(0, V, 20)])
    lp = m.token_log_probs(y)
    expect = np.log([m.prob_vector(y[:t])[y[t]] for t in range(1, y.size)])
    np.testing.assert_allclose(lp, expect, rtol=0, atol=1e-12)
    hits = m.top1_hits(y, chunk=7)
    expect_hits = [np.argmax(m.prob_vector(y[:t])) == y[t] for t in range(1, y.size)]
    np.testing.assert_array_equal(hits, expect_hits)


def test_kn_tiny_and_invalid_inputs():
    m = bl.KneserNeyModel(5, order=3).fit(np.array([1]))  # shorter than the order
    assert abs(m.prob_vector((1, 2)).sum() - 1) < 1e-12
    m = bl.KneserNeyModel(5, order=3).fit(np.array([], np.int64))
    np.testing.assert_allclose(m.prob_vector((1,)), np.full(5, 0.2))
    assert m.token_log_probs(np.array([1])).size == 0
    m5 = bl.KneserNeyModel(5, order=5).fit(np.array([0, 1, 2, 3, 4, 0, 1, 2]))
    for y in (np.array([0, 1]), np.array([2, 3, 4])):  # shorter than the order
        lp = m5.token_log_probs(y)
        np.testing.assert_allclose(
            lp, np.log([m5.prob_vector(y[:t])[y[t]] for t in range(1, y.size)]), atol=1e-12)
        assert m5.top1_hits(y).shape == (y.size - 1,)
    with pytest.raises(ValueError):
        bl.KneserNeyModel(5, order=1)
    with pytest.raises(ValueError):
        bl.KneserNeyModel(5, order=2).fit(np.array([0, 5]))
    with pytest.raises(RuntimeError):
        bl.KneserNeyModel(5, order=2).prob_vector(())


# ----------------------------------------------------------------------------
# Held-out ranking on a structured corpus
# ----------------------------------------------------------------------------


def _second_order_chain(rng, V, n_tokens, table):
    out = np.empty(n_tokens, np.int64)
    out[:2] = rng.integers(0, V, 2)
    choice = rng.integers(0, table.shape[2], n_tokens)
    for t in range(2, n_tokens):
        out[t] = table[out[t - 2], out[t - 1], choice[t]]
    return out


def test_kn_orders_rank_on_structured_corpus():
    # Next token depends on the previous TWO (2 successors per pair): the
    # trigram sees the structure, the bigram only part of it.
    rng = np.random.default_rng(7)
    V = 24
    table = rng.integers(0, V, (V, V, 2))
    train = _second_order_chain(rng, V, 60000, table)
    test = _second_order_chain(rng, V, 6000, table)
    uni = bl.UnigramModel(V).fit(train).nats_per_token(test)
    bi = bl.KneserNeyModel(V, 2).fit(train).nats_per_token(test)
    tri = bl.KneserNeyModel(V, 3).fit(train).nats_per_token(test)
    five = bl.KneserNeyModel(V, 5).fit(train).nats_per_token(test)
    assert tri < bi < uni
    assert tri < math.log(2) + 0.1  # close to the true entropy (≤ ln 2)
    assert five < bi
    assert uni < math.log(V) + 1e-9


def test_seen_sequence_beats_random():
    rng = np.random.default_rng(3)
    V = 500
    r = np.arange(1, V + 1)
    train = rng.choice(V, size=30000, p=r**-1.0 / np.sum(r**-1.0))
    seen = train[1000:1060]
    rand = rng.integers(0, V, 60)
    for order in (2, 3, 5):
        m = bl.KneserNeyModel(V, order).fit(train)
        assert m.log_prob(seen) > m.log_prob(rand)
        assert m.log_prob(seen) <= 0
    u = bl.UnigramModel(V).fit(train)
    assert u.log_prob(seen) > u.log_prob(rand)
    # Higher orders memorise: the 5-gram gives the seen span far more mass.
    assert (bl.KneserNeyModel(V, 5).fit(train).log_prob(seen)
            > bl.KneserNeyModel(V, 2).fit(train).log_prob(seen) + 50)


# ----------------------------------------------------------------------------
# xz
# ----------------------------------------------------------------------------


def _pseudo_text(seed, n_words):
    rng = np.random.default_rng(seed)
    words = ["".join(chr(97 + c) for c in rng.integers(0, 26, rng.integers(2, 9)))
             for _ in range(400)]
    return " ".join(words[i] for i in rng.integers(0, 400, n_words))


def test_xz_conditional_bits():
    train = _pseudo_text(0, 6000)
    test = train[10000:16000]  # repeats part of the training text
    cond = bl.xz_conditional_bits(train, test)
    uncond = bl.xz_bits(test)
    assert 0 < cond < uncond / 4
    # Fresh text from the same vocabulary: conditioning still helps.
    fresh = _pseudo_text(1, 1000).encode()
    assert 0 < bl.xz_conditional_bits(train.encode(), fresh) < bl.xz_bits(fresh)
    # Keeping only the last N training bytes: the repeated span lies before
    # them, so the cost goes back up towards unconditional.
    tail_only = bl.xz_conditional_bits(train, test, max_train_bytes=2000)
    assert tail_only > cond
    none = bl.xz_conditional_bits(train, test, max_train_bytes=0)
    assert abs(none - uncond) <= 8 * 64  # container overhead only


# ----------------------------------------------------------------------------
# run_baselines
# ----------------------------------------------------------------------------


def test_run_baselines_convention():
    rng = np.random.default_rng(11)
    V = 24
    table = rng.integers(0, V, (V, V, 2))
    train = _second_order_chain(rng, V, 20000, table)
    test = _second_order_chain(rng, V, 2000, table)
    # Fake "texts": each token is 2 bytes of text.
    test_text = "".join(chr(97 + t % 26) + " " for t in test)
    train_text = "".join(chr(97 + t % 26) + " " for t in train)
    res = bl.run_baselines(train, test, test_text, train_text, V, orders=(2, 3, 5))
    assert [r.name for r in res] == ["unigram (add-one)", "KN bigram", "KN trigram",
                                     "KN 5-gram", "xz -9e | train"]
    n_bytes = len(test_text.encode())
    for r in res:
        assert r.n_tokens == test.size and r.n_bytes == n_bytes
    # Exact convention: first token by the add-one unigram, the rest by the model.
    u = bl.UnigramModel(V).fit(train)
    kn3 = bl.KneserNeyModel(V, 3).fit(train)
    total = -u.token_log_prob(int(test[0])) + kn3.nll(test)
    assert res[2].bits_per_byte == pytest.approx(total / LN2 / n_bytes, rel=1e-12)
    assert res[2].nats_per_token == pytest.approx(total / test.size, rel=1e-12)
    assert res[0].nats_per_token == pytest.approx(-u.log_prob(test) / test.size
                                                  - u.token_log_prob(int(test[0])) / test.size)
    assert res[3].bits_per_byte < res[1].bits_per_byte < res[0].bits_per_byte
    for r in res[:4]:
        assert 0 <= r.top1_accuracy <= 1
    assert res[2].top1_accuracy > res[0].top1_accuracy
    assert res[4].top1_accuracy is None and res[4].bits_per_byte > 0
    xz = bl.xz_conditional_bits(train_text, test_text)
    assert res[4].bits_per_byte == pytest.approx(xz / n_bytes, rel=1e-12)
    assert len(mt.format_table(res).splitlines()) == 7
