"""GPT inference with an explicit KV cache: cache == recompute, batching == single rows."""
from __future__ import annotations

import pytest
import torch

from gsv.backends.base import KVCache
from tests.conftest import tiny_gpt


def _row(seed: int, tx: int, ty: int, bert_dim: int = 32):
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 732, (tx,), generator=g), torch.randn(bert_dim, tx, generator=g),
            torch.randint(0, 1024, (ty,), generator=g))


def _prefill_one(model, phones, bert, prompt):
    return model.prefill(phones[None], torch.tensor([phones.numel()]), bert[None], prompt[None], torch.tensor([prompt.numel()]))


@torch.no_grad()
@pytest.mark.parametrize("ty", [0, 7])
def test_decode_step_matches_full_recompute(ty):
    model = tiny_gpt()
    phones, bert, prompt = _row(1, 11, ty)
    logits, k, v, lens = _prefill_one(model, phones, bert, prompt)
    cache = KVCache(model.cfg.n_layer, model.cfg.n_head, model.cfg.hidden_dim // model.cfg.n_head, "cpu")
    cache.add_rows(k, v, lens)
    generated = []
    for step in range(6):
        token = int(torch.argmax(logits[0, :1024]))
        generated.append(token)
        cache.ensure_step()
        logits, nk, nv = model.decode_step(torch.tensor([token]), torch.tensor([ty + step]), cache.k, cache.v, cache.kv_lens())
        cache.append(nk, nv)
        full, *_ = _prefill_one(model, phones, bert, torch.cat([prompt, torch.tensor(generated)]))
        torch.testing.assert_close(logits, full, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_batch_of_three_rows_equals_single_runs():
    model = tiny_gpt(seed=3)
    rows = [_row(10, 5, 9), _row(11, 13, 4), _row(12, 8, 0)]
    n = len(rows)
    tx = max(r[0].numel() for r in rows)
    ty = max(r[2].numel() for r in rows)
    phones = torch.zeros(n, tx, dtype=torch.long)
    bert = torch.zeros(n, 32, tx)
    prompt = torch.zeros(n, ty, dtype=torch.long)
    for i, (p, b, y) in enumerate(rows):
        phones[i, : p.numel()], bert[i, :, : p.numel()], prompt[i, : y.numel()] = p, b, y
    logits, k, v, lens = model.prefill(phones, torch.tensor([r[0].numel() for r in rows]), bert, prompt,
                                       torch.tensor([r[2].numel() for r in rows]))
    batch = KVCache(model.cfg.n_layer, model.cfg.n_head, model.cfg.hidden_dim // model.cfg.n_head, "cpu")
    batch.add_rows(k, v, lens)
    singles = []
    for p, b, y in rows:
        lg, kk, vv, ll = _prefill_one(model, p, b, y)
        c = KVCache(model.cfg.n_layer, model.cfg.n_head, model.cfg.hidden_dim // model.cfg.n_head, "cpu")
        c.add_rows(kk, vv, ll)
        singles.append([lg, c, y.numel()])
    for i in range(n):
        torch.testing.assert_close(logits[i], singles[i][0][0], atol=1e-5, rtol=1e-5)
    positions = torch.tensor([r[2].numel() for r in rows])
    for step in range(5):
        tokens = torch.tensor([(37 * (i + 1) + 11 * step) % 1024 for i in range(n)])
        batch.ensure_step()
        lb, nk, nv = model.decode_step(tokens, positions, batch.k, batch.v, batch.kv_lens())
        batch.append(nk, nv)
        for i, s in enumerate(singles):
            s[1].ensure_step()
            ls, sk, sv = model.decode_step(tokens[i : i + 1], positions[i : i + 1], s[1].k, s[1].v, s[1].kv_lens())
            s[1].append(sk, sv)
            torch.testing.assert_close(lb[i], ls[0], atol=1e-5, rtol=1e-5)
        positions += 1
    # rows leaving the batch keep the others intact
    batch.remove_rows([1])
    assert batch.rows == 2 and batch.lengths.tolist() == [singles[0][1].lengths.item(), singles[2][1].lengths.item()]
    torch.testing.assert_close(batch.k[:, 1, :, : batch.lengths[1]], singles[2][1].k[:, 0, :, : batch.lengths[1]])


def test_kv_cache_grows_and_shrinks():
    cache = KVCache(2, 2, 4, "cpu")
    k = torch.randn(2, 2, 2, 200, 4)
    cache.add_rows(k, k.clone(), torch.tensor([200, 50]))
    assert cache.capacity >= 201
    cache.remove_rows([0])
    assert cache.rows == 1 and cache.capacity <= 256
