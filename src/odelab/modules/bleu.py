"""BLEU two ways, and the name of the scorer goes with every number.

- :func:`tok_bleu`: corpus BLEU on whitespace tokens, as ``multi-bleu.perl`` and fairseq's
  internal scorer compute it (4-gram precisions with clipped counts, geometric mean, brevity
  penalty exp(1 - r/c) if c < r). On Moses-tokenised, lower-cased text this is the paper's
  "tok-lc BLEU".
- :func:`sacre_bleu`: sacreBLEU (13a tokenisation) on detokenised hypotheses vs raw references.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence


def _ngrams(tokens: Sequence[str], n: int) -> Counter:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def tok_bleu(hyps: Sequence[str], refs: Sequence[str], max_n: int = 4) -> dict:
    """Corpus BLEU (0-100) of whitespace-tokenised ``hyps`` against one reference each.

    Returns {"bleu", "precisions" (%), "bp", "sys_len", "ref_len"}.
    """
    if len(hyps) != len(refs):
        raise ValueError(f"{len(hyps)} hypotheses but {len(refs)} references")
    match, total = [0] * max_n, [0] * max_n
    c = r = 0
    for h, ref in zip(hyps, refs):
        ht, rt = h.split(), ref.split()
        c, r = c + len(ht), r + len(rt)
        for n in range(1, max_n + 1):
            hn, rn = _ngrams(ht, n), _ngrams(rt, n)
            match[n - 1] += sum(min(k, rn[g]) for g, k in hn.items())
            total[n - 1] += max(len(ht) - n + 1, 0)
    prec = [100.0 * m / t if t else 0.0 for m, t in zip(match, total)]
    if min(match) == 0 or c == 0:
        bleu = 0.0
    else:
        log_p = sum(math.log(m / t) for m, t in zip(match, total)) / max_n
        bp = 1.0 if c >= r else math.exp(1 - r / c)
        bleu = 100.0 * bp * math.exp(log_p)
    bp = 1.0 if c >= r or c == 0 else math.exp(1 - r / c)
    return {"bleu": bleu, "precisions": prec, "bp": bp, "sys_len": c, "ref_len": r}


def sacre_bleu(hyps: Sequence[str], refs: Sequence[str], lowercase: bool = False) -> float:
    """sacreBLEU 13a on detokenised text (``lowercase``: the ``-lc`` flag)."""
    import sacrebleu

    return sacrebleu.corpus_bleu(list(hyps), [list(refs)], lowercase=lowercase).score
