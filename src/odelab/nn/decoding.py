"""Autoregressive decoding for :class:`~odelab.nn.transformer.Seq2SeqTransformer`: greedy and
beam search, incremental (key/value cache) or by recomputing the whole prefix each step.

Beam search follows fairseq: a hypothesis y of length |y| (EOS included) is ranked by
``log p(y | x) / |y|^lenpen`` once finished; ``max_len = max_len_a * |x| + max_len_b``.
"""

from __future__ import annotations

import torch


def _reorder(cache: dict, order: torch.Tensor) -> None:
    """Select rows ``order`` of every cached key/value tensor (in place)."""
    for v in cache.values():
        if isinstance(v, dict):
            _reorder(v, order)
    for name in ("k", "v"):
        if name in cache:
            cache[name] = cache[name].index_select(0, order)


class _Stepper:
    """log p(y_t | y_<t, x) for the last position, cached or recomputed."""

    def __init__(self, model, memory, memory_mask, use_cache: bool):
        self.model, self.memory, self.memory_mask = model, memory, memory_mask
        self.cache = {} if use_cache else None

    def __call__(self, prefix: torch.Tensor) -> torch.Tensor:
        t = prefix.shape[1]
        if self.cache is not None:
            logits = self.model.decode(
                prefix[:, -1:], self.memory, self.memory_mask, cache=self.cache, offset=t - 1
            )
        else:
            logits = self.model.decode(prefix, self.memory, self.memory_mask)
        last = logits[:, -1]
        return torch.log_softmax(last.to(torch.promote_types(last.dtype, torch.float32)), -1)

    def reorder(self, order: torch.Tensor) -> None:
        self.memory = self.memory.index_select(0, order)
        self.memory_mask = self.memory_mask.index_select(0, order)
        if self.cache is not None:
            _reorder(self.cache, order)


def _max_len(src: torch.Tensor, pad: int, a: float, b: int) -> int:
    src_len = src.ne(pad).sum(1).max().item()
    return int(a * src_len + b)


@torch.no_grad()
def greedy_decode(model, src, max_len_a: float = 0.0, max_len_b: int = 200, use_cache=True):
    """Argmax decoding. Returns a list (one per sentence) of token lists without BOS/EOS."""
    pad, bos, eos = model.padding_idx, model.bos_idx, model.eos_idx
    memory, mask = model.encode(src)
    step = _Stepper(model, memory, mask, use_cache)
    b = src.shape[0]
    ys = torch.full((b, 1), bos, dtype=torch.long, device=src.device)
    done = torch.zeros(b, dtype=torch.bool, device=src.device)
    for _ in range(max(1, _max_len(src, pad, max_len_a, max_len_b))):
        lp = step(ys)
        nxt = lp.argmax(-1)
        nxt = torch.where(done, torch.full_like(nxt, pad), nxt)
        ys = torch.cat([ys, nxt[:, None]], 1)
        done |= nxt.eq(eos)
        if done.all():
            break
    out = []
    for row in ys[:, 1:].tolist():
        toks = []
        for t in row:
            if t in (eos, pad):
                break
            toks.append(t)
        out.append(toks)
    return out


@torch.no_grad()
def beam_search(
    model,
    src: torch.Tensor,
    beam: int = 5,
    lenpen: float = 1.0,
    max_len_a: float = 0.0,
    max_len_b: int = 200,
    use_cache: bool = True,
    return_scores: bool = False,
):
    """Beam search; returns the best hypothesis per sentence (token lists without BOS/EOS),
    and with ``return_scores`` also its length-normalised score."""
    pad, bos, eos = model.padding_idx, model.bos_idx, model.eos_idx
    bsz, device = src.shape[0], src.device
    max_len = max(1, _max_len(src, pad, max_len_a, max_len_b))
    memory, mask = model.encode(src)
    order = torch.arange(bsz, device=device).repeat_interleave(beam)
    step = _Stepper(model, memory.index_select(0, order), mask.index_select(0, order), use_cache)
    ys = torch.full((bsz * beam, 1), bos, dtype=torch.long, device=device)
    scores = torch.zeros(bsz, beam, device=device)
    scores[:, 1:] = float("-inf")  # all beams start identical: keep one
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(bsz)]
    done = [False] * bsz
    for t in range(1, max_len + 1):
        lp = step(ys).view(bsz, beam, -1)
        vocab = lp.shape[-1]
        lp[:, :, pad] = float("-inf")
        if t == max_len:  # force EOS at the length limit
            forced = torch.full_like(lp, float("-inf"))
            forced[:, :, eos] = lp[:, :, eos]
            lp = forced
        cand = (scores[:, :, None] + lp).view(bsz, -1)
        top, idx = cand.topk(2 * beam, dim=1)
        beam_idx, tok = idx // vocab, idx % vocab
        new_scores = torch.full((bsz, beam), float("-inf"), device=device)
        new_beam = torch.zeros(bsz, beam, dtype=torch.long, device=device)
        new_tok = torch.full((bsz, beam), pad, dtype=torch.long, device=device)
        top_l, beam_l, tok_l = top.tolist(), beam_idx.tolist(), tok.tolist()
        for i in range(bsz):
            if done[i]:
                continue
            k = 0
            for j in range(2 * beam):
                s, bi, w = top_l[i][j], beam_l[i][j], tok_l[i][j]
                if s == float("-inf"):
                    break
                if w == eos:
                    if j < beam:  # fairseq: an EOS only counts among the top `beam` candidates
                        hyp = ys[i * beam + bi, 1:].tolist()
                        finished[i].append((s / (len(hyp) + 1) ** lenpen, hyp))
                    continue
                if k < beam:
                    new_scores[i, k], new_beam[i, k], new_tok[i, k] = s, bi, w
                    k += 1
            if len(finished[i]) >= beam or t == max_len:
                done[i] = True
        if all(done):
            break
        sel = (torch.arange(bsz, device=device)[:, None] * beam + new_beam).view(-1)
        ys = torch.cat([ys.index_select(0, sel), new_tok.view(-1, 1)], 1)
        scores = new_scores
        for i in range(bsz):
            if done[i]:
                scores[i] = float("-inf")
        step.reorder(sel)
    best, best_scores = [], []
    for i in range(bsz):
        s, hyp = max(finished[i], key=lambda h: h[0]) if finished[i] else (float("-inf"), [])
        best.append(hyp)
        best_scores.append(s)
    return (best, best_scores) if return_scores else best
