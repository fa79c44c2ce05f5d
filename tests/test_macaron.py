"""Macaron Net: layer algebra, parameter matching, decoding, BLEU, data pipeline, fdr runs."""

from __future__ import annotations

import pytest
import torch

from odelab.nn.decoding import beam_search, greedy_decode
from odelab.nn.transformer import Seq2SeqTransformer, TransformerLayer, standard_steps
from odelab.papers.macaron.model import MacaronTransformer, macaron_steps

# (d_model, heads, layers, baseline ffn) of the spec's architectures (Sec. 3.1)
ARCHS = {
    "iwslt_small": (512, 4, 6, 1024),
    "wmt_base": (512, 8, 6, 2048),
    "wmt_big": (1024, 16, 6, 4096),
}


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_macaron_matches_baseline_parameter_count(arch):
    """Equal FFN weights; Macaron adds one FFN output bias and one LayerNorm (affine: 2d) per
    layer, i.e. +3d per layer (spec Sec. 2.3). Built on the meta device: no memory, no time."""
    d, h, n, f = ARCHS[arch]
    kw = dict(vocab_size=10_000, d_model=d, heads=h, enc_layers=n, dec_layers=n, ffn_dim=f)
    with torch.device("meta"):
        mac, base = MacaronTransformer(macaron=True, **kw), MacaronTransformer(macaron=False, **kw)
    assert n_params(mac) - n_params(base) == 3 * d * (2 * n)
    ffn = [m for m in mac.modules() if m.__class__.__name__ == "FeedForward"]
    assert len(ffn) == 4 * n and all(m.fc1.out_features == f // 2 for m in ffn)
    assert len({id(m.fc1.weight) for m in ffn}) == len(ffn)  # never shared


def test_bert_base_parameter_count():
    """BERT base (768/12/12, FFN 3072 vs 2 x 1536), LayerNorm without affine: +d per layer."""
    from odelab.papers.macaron.bert import BertEncoder

    kw = dict(vocab_size=32_768, d_model=768, heads=12, layers=12, ffn_dim=3072)
    with torch.device("meta"):
        mac, base = BertEncoder(macaron=True, **kw), BertEncoder(macaron=False, **kw)
    assert n_params(mac) - n_params(base) == 768 * 12
    assert n_params(base) > 80e6  # a real BERT-base-sized encoder


@pytest.mark.parametrize("norm", ["pre", "post"])
@pytest.mark.parametrize("decoder", [False, True])
def test_macaron_without_first_ffn_and_scale_one_is_the_standard_layer(norm, decoder):
    torch.manual_seed(0)
    d, f = 16, 32
    std = TransformerLayer(d, 4, standard_steps(f, decoder), norm=norm).double().eval()
    steps = macaron_steps(f, decoder, half_step_scale=1.0, ffn_split="full", drop_first_ffn=True)
    mac = TransformerLayer(d, 4, steps, norm=norm).double().eval()
    mac.load_state_dict(std.state_dict())  # identical structure, identical names
    x, mem = torch.randn(2, 5, d, dtype=torch.float64), torch.randn(2, 7, d, dtype=torch.float64)
    kw = dict(memory=mem, causal=True) if decoder else {}
    torch.testing.assert_close(mac(x, **kw), std(x, **kw), rtol=0, atol=0)


def test_macaron_layer_is_the_strang_splitting_written_out():
    """x + 1/2 F_a(LN_a x) -> + A(LN_b .) -> + 1/2 F_c(LN_c .), by hand, float64, pre-norm."""
    torch.manual_seed(1)
    layer = TransformerLayer(8, 2, macaron_steps(16, False), norm="pre", dropout=0.0).double()
    layer.eval()
    x = torch.randn(3, 4, 8, dtype=torch.float64)
    fa, attn, fc = layer.blocks
    la, lb, lc = layer.norms
    y = x + 0.5 * fa(la(x))
    y = y + attn(lb(y))
    y = y + 0.5 * fc(lc(y))
    torch.testing.assert_close(layer(x), y, rtol=1e-12, atol=1e-12)
    post = TransformerLayer(8, 2, macaron_steps(16, False), norm="post", dropout=0.0).double()
    post.load_state_dict(layer.state_dict())
    post.eval()
    z = la(x + 0.5 * fa(x))
    z = lb(z + attn(z))
    z = lc(z + 0.5 * fc(z))
    torch.testing.assert_close(post(x), z, rtol=1e-12, atol=1e-12)


def test_share_ffn_params_is_refused():
    with pytest.raises(ValueError, match="share_ffn_params"):
        MacaronTransformer(vocab_size=20, d_model=8, heads=2, ffn_dim=16, share_ffn_params=True)


def tiny_model(macaron=True, seed=0, **kw) -> Seq2SeqTransformer:
    torch.manual_seed(seed)
    cfg = dict(vocab_size=23, d_model=16, heads=4, enc_layers=2, dec_layers=2, ffn_dim=32)
    cfg.update(kw)
    return MacaronTransformer(macaron=macaron, **cfg).eval()


def test_padding_does_not_change_the_encoding():
    m = tiny_model()
    src = torch.tensor([[5, 6, 7, 2]])
    padded = torch.tensor([[5, 6, 7, 2, 1, 1]])
    a, _ = m.encode(src)
    b, _ = m.encode(padded)
    torch.testing.assert_close(a, b[:, :4], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("macaron", [True, False])
def test_incremental_decoding_equals_full_recompute(macaron):
    m = tiny_model(macaron).double()
    src = torch.tensor([[5, 6, 7, 8, 2], [9, 10, 2, 1, 1], [11, 12, 13, 2, 1]])
    memory, mask = m.encode(src)
    prev = torch.tensor([[0, 4, 5, 6, 7, 8]] * 3)
    full = m.decode(prev, memory, mask)
    cache: dict = {}
    steps = [m.decode(prev[:, t : t + 1], memory, mask, cache, offset=t) for t in range(6)]
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=1e-10, atol=1e-10)
    g1 = greedy_decode(m, src, max_len_b=12, use_cache=True)
    g2 = greedy_decode(m, src, max_len_b=12, use_cache=False)
    assert g1 == g2 and all(len(h) <= 12 for h in g1)
    b1, s1 = beam_search(m, src, beam=4, lenpen=0.6, max_len_b=12, return_scores=True)
    b2, s2 = beam_search(m, src, 4, 0.6, max_len_b=12, use_cache=False, return_scores=True)
    assert b1 == b2
    torch.testing.assert_close(torch.tensor(s1), torch.tensor(s2))


def _score(m, src, hyp, lenpen):
    memory, mask = m.encode(src)
    prev = torch.tensor([[m.bos_idx, *hyp]])
    lp = torch.log_softmax(m.decode(prev, memory, mask).double(), -1)[0]
    tgt = [*hyp, m.eos_idx]
    return sum(lp[i, t].item() for i, t in enumerate(tgt)) / len(tgt) ** lenpen


def test_beam_search_finds_the_exhaustive_optimum_on_a_tiny_problem():
    """Vocabulary of 3 real tokens + specials, max length 3: enumerate every hypothesis."""
    import itertools

    m = tiny_model(vocab_size=7, seed=3).double()
    src = torch.tensor([[4, 5, 6, 2]])
    words = [3, 4, 5, 6]
    hyps = [list(h) for n in range(0, 3) for h in itertools.product(words, repeat=n)]
    for lenpen in (0.0, 1.0):
        best = max(hyps, key=lambda h: _score(m, src, h, lenpen))
        # a wide beam is exhaustive here: it must return the true optimum and score
        out, sc = beam_search(m, src, beam=64, lenpen=lenpen, max_len_b=3, return_scores=True)
        assert out[0] == best
        assert sc[0] == pytest.approx(_score(m, src, best, lenpen), abs=1e-9)
    # beam 1 is greedy decoding
    assert beam_search(m, src, beam=1, lenpen=0.0, max_len_b=3) == greedy_decode(m, src, 0, 3)
