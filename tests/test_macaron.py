"""Macaron Net: layer algebra, parameter matching, decoding, BLEU, data pipeline, fdr runs."""

from __future__ import annotations

import pytest
import torch

from conftest import SHARED_DATA
from odelab.nn.decoding import beam_search, greedy_decode
from odelab.nn.transformer import Seq2SeqTransformer, TransformerLayer, standard_steps
from odelab.papers.macaron.model import MacaronTransformer, macaron_steps

pytestmark = pytest.mark.usefixtures("one_thread")  # many tiny ops: see conftest


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


@pytest.mark.parametrize("macaron", [True, False])
def test_ffn_dim_by_position_is_the_ffn_dim(macaron):
    """``MacaronTransformer(vocab, tgt_vocab, d_model, heads, enc, dec, ffn_dim)`` builds the same
    network as the keyword call: the FFN width is 48 (Macaron: two halves of 24), not 1024."""
    torch.manual_seed(0)
    by_name = MacaronTransformer(vocab_size=20, d_model=8, heads=2, enc_layers=1, dec_layers=1,
                                 ffn_dim=48, macaron=macaron)  # fmt: skip
    torch.manual_seed(0)
    by_position = MacaronTransformer(20, None, 8, 2, 1, 1, 48, macaron=macaron)
    a, b = by_name.state_dict(), by_position.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    widths = {m.out_features for m in by_position.modules() if isinstance(m, torch.nn.Linear)}
    assert widths >= ({24} if macaron else {48}) and 1024 not in widths and 512 not in widths


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


# ---------------------------------------------------------------- BLEU, loss, schedule


def test_tok_bleu_equals_sacrebleu_tokenize_none():
    import random

    import sacrebleu

    from odelab.modules.bleu import tok_bleu

    rng = random.Random(0)
    words = [
        "a",
        "man",
        "in",
        "a",
        "blue",
        "shirt",
        "is",
        "riding",
        "a",
        "bike",
        "on",
        "the",
        "street",
        ".",
        "two",
        "dogs",
        "play",
    ]
    refs = [" ".join(rng.choices(words, k=rng.randint(3, 15))) for _ in range(60)]
    hyps = [
        " ".join(w if rng.random() < 0.7 else rng.choice(words) for w in r.split()[: -1 or None])
        for r in refs
    ]
    ours = tok_bleu(hyps, refs)
    ref = sacrebleu.corpus_bleu(hyps, [refs], tokenize="none", force=True)
    assert ours["bleu"] == pytest.approx(ref.score, abs=1e-9)
    assert ours["precisions"] == pytest.approx(ref.precisions, abs=1e-9)
    assert ours["bp"] == pytest.approx(ref.bp, abs=1e-12)
    assert tok_bleu(refs, refs)["bleu"] == pytest.approx(100.0)
    assert tok_bleu(["x y z"], ["a b c d"])["bleu"] == 0.0


def test_label_smoothed_loss_matches_the_formula_in_float64():
    from odelab.modules.translation import label_smoothed_nll

    torch.manual_seed(0)
    logits = torch.randn(2, 3, 7, dtype=torch.float64)
    tgt = torch.tensor([[3, 4, 1], [5, 1, 1]])  # 1 = pad
    loss, nll, n = label_smoothed_nll(logits.double(), tgt, 0.1, 1)
    lp = torch.log_softmax(logits, -1)
    want_loss = want_nll = 0.0
    for b, t in [(0, 0), (0, 1), (1, 0)]:
        y = tgt[b, t]
        want_nll += -lp[b, t, y].item()
        want_loss += 0.9 * -lp[b, t, y].item() + 0.1 / 7 * -lp[b, t].sum().item()
    assert n.item() == 3
    assert nll.item() == pytest.approx(want_nll, rel=1e-6)
    assert loss.item() == pytest.approx(want_loss, rel=1e-6)
    # PyTorch's label smoothing is the same loss (mean over tokens)
    ce = torch.nn.functional.cross_entropy(
        logits.reshape(-1, 7), tgt.reshape(-1), ignore_index=1, label_smoothing=0.1
    )
    assert (loss / n).item() == pytest.approx(ce.item(), rel=1e-6)


def test_inverse_sqrt_schedule():
    from odelab.modules.translation import InverseSqrtLR

    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1.5e-3)
    sched = InverseSqrtLR(opt, warmup_updates=4, warmup_init_lr=1e-7)
    lrs = []
    for _ in range(9):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(1e-7)
    assert lrs[2] == pytest.approx(1e-7 + (1.5e-3 - 1e-7) * 2 / 4)
    assert lrs[4] == pytest.approx(1.5e-3)
    assert lrs[8] == pytest.approx(1.5e-3 * (4 / 8) ** 0.5)


def test_checkpoint_averaging(tmp_path):
    from odelab.callbacks.averaging import average_checkpoints

    paths = []
    for i in range(3):
        p = tmp_path / f"{i}.ckpt"
        torch.save({"state_dict": {"w": torch.full((2,), float(i)), "n": torch.tensor(i)}}, p)
        paths.append(p)
    avg = average_checkpoints(paths)
    torch.testing.assert_close(avg["w"], torch.full((2,), 1.0))
    assert avg["n"].item() == 2  # integer buffers come from the last checkpoint


# ---------------------------------------------------------------- data pipeline


def test_moses_clean_bpe_pipeline_pieces():
    from odelab.data.translation import BPECodes, clean_pairs, learn_bpe, tokenize

    # tokenizer.perl's rules: English keeps 's together, other languages split the apostrophe
    de = tokenize(['Ein Mann\'s Hund, der "läuft".'], "de", lowercase=True)[0]
    assert de == [
        "ein",
        "mann",
        "&apos;",
        "s",
        "hund",
        ",",
        "der",
        "&quot;",
        "läuft",
        "&quot;",
        ".",
    ]
    en = tokenize(["A Man's dog."], "en", lowercase=False)[0]
    assert en == ["A", "Man", "&apos;s", "dog", "."]
    src = [["a"] * 3, ["a"] * 10, [], ["a"] * 200, ["a"] * 4]
    tgt = [["b"] * 4, ["b"] * 5, ["b"], ["b"] * 200, ["b"] * 6]
    assert clean_pairs(src, tgt, ratio=1.5, max_len=175) == [0, 4]
    lines = [["lower", "lowest", "newer", "newest"]] * 5
    codes = learn_bpe(lines, 8)
    bpe = BPECodes(codes)
    pieces = bpe.apply(["lowest", "unknownword"])
    assert BPECodes.remove(pieces) == ["lowest", "unknownword"]
    assert any(p.endswith("@@") for p in bpe.apply(["unknownword"]))


def test_token_batches_respect_max_tokens_and_cover_everything():
    import random

    from odelab.data.translation import ShuffledBatchSampler, token_batches

    rng = random.Random(0)
    s = [rng.randint(1, 40) for _ in range(500)]
    t = [rng.randint(1, 40) for _ in range(500)]
    batches = token_batches(s, t, max_tokens=200)
    assert sorted(i for b in batches for i in b) == list(range(500))
    assert all(len(b) * max(max(s[i], t[i]) for i in b) <= 200 for b in batches)
    sampler = ShuffledBatchSampler(batches, shuffle=True, seed=3)
    e0 = list(sampler)
    sampler.set_epoch(1)
    assert list(sampler) != e0 and sorted(map(tuple, e0)) == sorted(map(tuple, batches))
    sampler.set_epoch(0)
    assert list(sampler) == e0
    with pytest.raises(ValueError, match="max_tokens"):
        token_batches([300], [3], max_tokens=200)


MULTI30K = SHARED_DATA / "multi30k" / "raw"
needs_multi30k = pytest.mark.skipif(
    not (MULTI30K / "train.de.gz").is_file(), reason=f"no Multi30k copy at {MULTI30K}"
)


@needs_multi30k
def test_multi30k_pipeline_on_the_real_files(tmp_path):
    from odelab.data.translation import TranslationDataModule

    kw = dict(
        corpus="multi30k",
        data_dir=str(SHARED_DATA),
        bpe_merges=300,
        train_subset=400,
        eval_subset=50,
        max_tokens=300,
        cache_dir=str(tmp_path),
    )
    dm = TranslationDataModule(**kw)
    dm.prepare_data()
    dm.setup()
    tr, va = dm.split("train"), dm.split("valid")
    assert 380 <= len(tr["src"]) <= 400 and len(va["src"]) == 50  # cleaning drops a few
    assert tr["ref_tok"][0] == "two young , white males are outside near many bushes ."
    assert va["ref_raw"][0][0].isupper()  # raw references keep their case (sacreBLEU)
    assert all(x[-1] == dm.vocab.eos for x in tr["src"])
    src, prev, tgt, ids = next(iter(dm.train_dataloader()))
    assert src.numel() <= 300 and prev[:, 0].eq(dm.vocab.bos).all()
    shifted = prev[:, 1:] != dm.vocab.pad  # prev = <s> y_1 .. y_{n-1}, tgt = y_1 .. y_n </s>
    assert torch.equal(prev[:, 1:][shifted], tgt[:, :-1][shifted])
    i = ids[0].item()
    tok, detok = dm.to_text(tr["tgt"][i])
    assert tok == tr["ref_tok"][i] and detok.lower() == detok  # BPE removal round-trips
    mtime = dm.cache_file.stat().st_mtime
    again = TranslationDataModule(**kw)
    again.prepare_data()
    assert again.cache_file == dm.cache_file and dm.cache_file.stat().st_mtime == mtime
    assert TranslationDataModule(**{**kw, "bpe_merges": 301}).cache_file != dm.cache_file


def test_missing_corpus_is_a_dataset_error(tmp_path):
    from odelab.data.errors import DatasetError
    from odelab.data.translation import read_corpus

    for corpus in ("multi30k", "iwslt14", "wmt14"):
        with pytest.raises(DatasetError, match="data.download=true"):
            read_corpus(corpus, tmp_path, "de", "en") if corpus != "wmt14" else read_corpus(
                corpus, tmp_path, "en", "de"
            )


# ---------------------------------------------------------------- experiments (debug=fdr)

COVERED_EXPERIMENTS = [
    "macaron_iwslt14",
    "transformer_iwslt14",
    "macaron_wmt14_base",
    "transformer_wmt14_base",
    "macaron_wmt14_big",
    "transformer_wmt14_big",
    "macaron_multi30k",
    "transformer_multi30k",
    "macaron_bert_base",
    "bert_base",
    "glue_cola",
    "glue_sst2",
    "glue_mrpc",
    "glue_stsb",
    "glue_qqp",
    "glue_mnli",
    "glue_mnli_mm",
    "glue_qnli",
    "glue_rte",
]

_DE = [
    "ein",
    "mann",
    "fährt",
    "fahrrad",
    ".",
    "zwei",
    "hunde",
    "spielen",
    "im",
    "park",
    ".",
    "eine",
    "frau",
    "liest",
    "ein",
    "buch",
]
_EN = [
    "a",
    "man",
    "rides",
    "a",
    "bike",
    ".",
    "two",
    "dogs",
    "play",
    "in",
    "the",
    "park",
    ".",
    "a",
    "woman",
    "reads",
    "a",
    "book",
]


def _sentences(n: int, seed: int, words: list[str]) -> list[str]:
    import random

    rng = random.Random(seed)
    return [" ".join(rng.choices(words, k=rng.randint(3, 9))).capitalize() for _ in range(n)]


def write_iwslt14(root, n_train: int = 120, n_test: int = 6) -> None:
    """The layout of fairseq's de-en.tgz: tagged training text, xml dev/test sets."""
    d = root / "iwslt14" / "de-en"
    d.mkdir(parents=True)
    for lang, words in (("de", _DE), ("en", _EN)):
        lines = [
            "<url>http://www.ted.com/talks/x.html</url>",
            "<talkid>1</talkid>",
            "<keywords>talks</keywords>",
            f"<title>{words[0]} title</title>",
            *_sentences(n_train, 0, words),
        ]
        (d / f"train.tags.de-en.{lang}").write_text("\n".join(lines) + "\n")
        from odelab.data.translation import IWSLT14_TEST

        for k, name in enumerate(IWSLT14_TEST):
            segs = [
                f'<seg id="{i + 1}"> {s} </seg>'
                for i, s in enumerate(_sentences(n_test, 10 + k, words))
            ]
            xml = ["<mteval>", '<doc docid="1">', *segs, "</doc>", "</mteval>"]
            (d / f"{name}.de-en.{lang}.xml").write_text("\n".join(xml) + "\n")


def write_wmt14(root, n: int = 40) -> None:
    """The files the WMT14 archives extract to (training/, dev/, test-full/)."""
    from odelab.data.translation import WMT14_TRAIN

    d = root / "wmt14_en_de"
    for lang, words in (("de", _DE), ("en", _EN)):
        for k, c in enumerate(WMT14_TRAIN):
            (d / c).parent.mkdir(parents=True, exist_ok=True)
            (d / f"{c}.{lang}").write_text("\n".join(_sentences(n, k, words)) + "\n")
        (d / "dev").mkdir(exist_ok=True)
        (d / "dev" / f"newstest2013.{lang}").write_text("\n".join(_sentences(8, 7, words)) + "\n")
        (d / "test-full").mkdir(exist_ok=True)
        kind = "src" if lang == "en" else "ref"
        segs = [f'<seg id="{i + 1}">{s}</seg>' for i, s in enumerate(_sentences(8, 8, words))]
        (d / "test-full" / f"newstest2014-deen-{kind}.{lang}.sgm").write_text(
            "\n".join(['<refset setid="newstest2014">', '<doc docid="1">', *segs, "</doc>"])
        )


@pytest.fixture(scope="module")
def mt_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("mt")
    write_iwslt14(root)
    write_wmt14(root)
    return root


TINY_NET = [
    "model.net.d_model=16",
    "model.net.heads=2",
    "model.net.enc_layers=1",
    "model.net.dec_layers=1",
    "model.net.ffn_dim=32",
]


def _fdr(run_experiment, cache_dir, exp, data_dir, extra=()):
    overrides = [
        f"experiment={exp}",
        "debug=fdr",
        "logger=csv",
        f"paths.data_dir={data_dir}",
        f"data.cache_dir={cache_dir}",
        "data.bpe_merges=60",
        "model.max_len_b=5",
        *extra,
    ]
    return run_experiment(overrides, name=exp)


@pytest.mark.parametrize(
    "exp",
    [
        "macaron_iwslt14",
        "transformer_iwslt14",
        "macaron_wmt14_base",
        "transformer_wmt14_base",
        "macaron_wmt14_big",
        "transformer_wmt14_big",
    ],
)
def test_paper_translation_experiments_fdr(exp, run_experiment, mt_data, tmp_path):
    """The paper recipes on tiny canonical-format files; the network shrunk to CPU size (the
    full-size networks are checked in test_full_size_networks_build_and_step, slow)."""
    from conftest import compose

    cfg = compose([f"experiment={exp}"], tmp_path / "c")
    big = "big" in exp
    assert cfg.model.net.d_model == (1024 if big else 512)
    assert cfg.model.net.macaron == exp.startswith("macaron")
    assert cfg.data.corpus == ("iwslt14" if "iwslt" in exp else "wmt14")
    _fdr(run_experiment, mt_data / "cache", exp, mt_data, TINY_NET)


@pytest.fixture(scope="module")
def m30k_cache(tmp_path_factory):
    """One prepared Multi30k slice shared by the tests below (the data settings are equal)."""
    return tmp_path_factory.mktemp("m30k_cache")


M30K_SLICE = ["data.train_subset=300", "data.eval_subset=20"]


@needs_multi30k
@pytest.mark.parametrize("exp", ["macaron_multi30k", "transformer_multi30k"])
def test_multi30k_experiments_fdr(exp, run_experiment, m30k_cache):
    """Real Multi30k files (a slice), the experiment's own network size."""
    _fdr(run_experiment, m30k_cache, exp, SHARED_DATA, [*M30K_SLICE, "data.max_tokens=512"])


@needs_multi30k
def test_multi30k_tiny_training_run_writes_bleu(run_experiment, m30k_cache):
    """Two real epochs on a slice: val loss falls, both BLEUs are logged, averaging works."""
    import json

    _, out = _fdr(
        run_experiment,
        m30k_cache,
        "macaron_multi30k",
        SHARED_DATA,
        [
            "~debug",
            *M30K_SLICE,
            "data.max_tokens=1024",
            "trainer.max_epochs=2",
            "callbacks.average.n=2",
            "test_ckpt=last",
            "model.beam=2",
            *TINY_NET,
        ],
    )
    res = json.loads((out / "results.json").read_text())
    m = res["metrics"]
    for k in ("val/loss", "val/bleu", "val/sacrebleu", "test/bleu", "test/sacrebleu", "test/loss"):
        assert k in m and m[k] == m[k], k
    assert (out / "checkpoints" / "avg" / "averaged.pt").is_file()


# ---------------------------------------------------------------- BERT and GLUE

_DOCS = [
    ["The cat sat on the mat.", "It was a sunny day.", "Then the cat slept."],
    ["Stocks rose on Monday.", "Investors were happy.", "Markets closed higher."],
    ["A man rides a bike.", "He wears a red helmet.", "The road is long.", "He is tired."],
]


def write_bert_corpus(root) -> None:
    d = root / "bert_corpus"
    d.mkdir(parents=True)
    text = "\n\n".join("\n".join(doc) for doc in _DOCS) + "\n"
    (d / "train.txt").write_text(text)
    (d / "valid.txt").write_text(text)


# One canonical GLUE row per task (the columns download_glue_data.py writes).
_GLUE_ROWS = {
    "CoLA": (None, ["gj04\t1\t\tThe cat sat on the mat.", "gj04\t0\t*\tMat the on sat cat."]),
    "SST-2": ("sentence\tlabel", ["a great movie .\t1", "a dull film .\t0"]),
    "MRPC": (
        "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String",
        ["1\t1\t2\tThe cat sat.\tA cat was sitting.", "0\t3\t4\tStocks rose.\tIt rained."],
    ),
    "STS-B": (
        "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore",
        [
            "0\tmain\tx\t2012\t1\tnone\tnone\tA man rides.\tA man is riding.\t4.2",
            "1\tmain\tx\t2012\t2\tnone\tnone\tA cat.\tStocks rose.\t0.4",
        ],
    ),
    "QQP": (
        "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate",
        ["0\t1\t2\tHow old is it?\tWhat is its age?\t1", "1\t3\t4\tWhy?\tWhere?\t0"],
    ),
    "MNLI": (
        "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\t"
        "sentence1_parse\tsentence2_parse\tsentence1\tsentence2\tlabel1\tgold_label",
        [
            "0\t1\t1\tfic\t-\t-\t-\t-\tA man rides.\tA man moves.\tentailment\tentailment",
            "1\t2\t2\tfic\t-\t-\t-\t-\tA cat.\tA dog.\tcontradiction\tcontradiction",
            "2\t3\t3\tfic\t-\t-\t-\t-\tIt rains.\tIt is May.\tneutral\tneutral",
        ],
    ),
    "QNLI": (
        "index\tquestion\tsentence\tlabel",
        ["0\tWho rides?\tA man rides.\tentailment", "1\tWhy?\tIt is May.\tnot_entailment"],
    ),
    "RTE": (
        "index\tsentence1\tsentence2\tlabel",
        ["0\tA man rides.\tA man moves.\tentailment", "1\tA cat.\tA dog.\tnot_entailment"],
    ),
}


def write_glue(root) -> None:
    for folder, (header, rows) in _GLUE_ROWS.items():
        d = root / "glue" / folder
        d.mkdir(parents=True)
        lines = ([header] if header else []) + rows * 4
        names = (
            ["train.tsv", "dev_matched.tsv", "dev_mismatched.tsv"]
            if folder == "MNLI"
            else ["train.tsv", "dev.tsv"]
        )
        for n in names:
            (d / n).write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def bert_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("bert")
    write_bert_corpus(root)
    write_glue(root)
    return root


def test_mask_tokens_80_10_10():
    from odelab.papers.macaron.bert_module import mask_tokens

    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(5, 100, (200, 200), generator=g)
    tokens[:, 0] = 0
    x, tgt = mask_tokens(tokens, 101, 100, {0, 1, 2, 3}, 0.15, g)
    chosen = tgt.ne(-100)
    assert not chosen[:, 0].any()  # never a special token
    assert chosen.float().mean().item() == pytest.approx(0.15 * 199 / 200, abs=0.01)
    assert torch.equal(tgt[chosen], tokens[chosen])
    masked = x[chosen].eq(100).float().mean().item()
    same = x[chosen].eq(tokens[chosen]).float().mean().item()
    assert masked == pytest.approx(0.8, abs=0.02) and same == pytest.approx(0.1, abs=0.02)
    assert torch.equal(x[~chosen], tokens[~chosen])


def test_glue_reader_on_canonical_rows(bert_data):
    from odelab.data.glue import GLUE_TASKS, read_glue

    a, b, y = read_glue("stsb", bert_data / "glue" / "STS-B" / "train.tsv")
    assert a[0] == "A man rides." and b[0] == "A man is riding." and y[:2] == [4.2, 0.4]
    a, b, y = read_glue("cola", bert_data / "glue" / "CoLA" / "train.tsv")
    assert b is None and y[:2] == [1, 0]
    _, _, y = read_glue("mnli", bert_data / "glue" / "MNLI" / "dev_matched.tsv")
    assert y[:3] == [1, 0, 2] and GLUE_TASKS["mnli_mm"].dev == "dev_mismatched.tsv"
    from odelab.data.errors import DatasetError

    with pytest.raises(DatasetError, match="not the canonical GLUE RTE format"):
        read_glue("rte", bert_data / "glue" / "CoLA" / "train.tsv")


BERT_TINY = [
    "model.net.d_model=16",
    "model.net.heads=2",
    "model.net.layers=2",
    "model.net.ffn_dim=32",
    "model.net.max_positions=64",
    "data.max_len=64",
]


@pytest.mark.parametrize("exp", ["macaron_bert_base", "bert_base"])
def test_bert_pretraining_fdr(exp, run_experiment, bert_data, tmp_path):
    from conftest import compose

    cfg = compose([f"experiment={exp}"], tmp_path / "c")
    assert cfg.model.net.d_model == 768 and cfg.model.net.layers == 12
    assert cfg.model.net.macaron == (exp == "macaron_bert_base") and cfg.seed == 3
    run_experiment(
        [
            f"experiment={exp}",
            "debug=fdr",
            "logger=csv",
            f"paths.data_dir={bert_data}",
            f"data.cache_dir={tmp_path}",
            "data.bpe_merges=50",
            "data.batch_size=4",
            *BERT_TINY,
        ],
        name=exp,
    )


GLUE = ["cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "mnli_mm", "qnli", "rte"]


@pytest.mark.parametrize("task", GLUE)
def test_glue_fdr(task, run_experiment, bert_data, tmp_path):
    run_experiment(
        [
            f"experiment=glue_{task}",
            "debug=fdr",
            "logger=csv",
            f"paths.data_dir={bert_data}",
            f"data.cache_dir={tmp_path}",
            "data.bpe_merges=40",
            *BERT_TINY,
        ],
        name=task,
    )


def test_pretrain_then_finetune(run_experiment, bert_data, tmp_path):
    """A pre-training checkpoint's encoder and vocabulary carry over into GLUE fine-tuning."""
    import json

    _, out = run_experiment(
        [
            "experiment=macaron_bert_base",
            "logger=csv",
            f"paths.data_dir={bert_data}",
            f"data.cache_dir={tmp_path}",
            "data.bpe_merges=50",
            "data.batch_size=4",
            "trainer.max_steps=4",
            "trainer.accumulate_grad_batches=1",
            *BERT_TINY,
        ],
        name="pre",
    )
    ckpt = sorted((out / "checkpoints").glob("epoch_*.ckpt"))[-1]
    corpus = next(tmp_path.glob("bert_corpus-*.pt"))
    _, out2 = run_experiment(
        [
            "experiment=glue_rte",
            "logger=csv",
            f"paths.data_dir={bert_data}",
            f"data.cache_dir={tmp_path / 'g'}",
            f"data.vocab_from={corpus}",
            f"model.init_from={ckpt}",
            "trainer.max_epochs=1",
            *BERT_TINY,
        ],
        name="ft",
    )
    m = json.loads((out2 / "results.json").read_text())["metrics"]
    assert 0.0 <= m["test/acc"] <= 1.0


@pytest.mark.slow
@pytest.mark.parametrize(
    "exp", ["macaron_wmt14_big", "transformer_wmt14_big", "macaron_bert_base"]
)
def test_full_size_networks_build_and_step(exp, tmp_path):
    """The experiments' own (full-size) networks: one forward/backward on a tiny batch."""
    import hydra

    from conftest import compose
    from odelab.modules.translation import label_smoothed_nll

    cfg = compose([f"experiment={exp}"], tmp_path)
    net = hydra.utils.instantiate(cfg.model.net)(vocab_size=1000)
    tokens = torch.randint(4, 1000, (2, 7))
    if "bert" in exp:
        out = net(tokens, torch.zeros_like(tokens))  # segment ids: every embedding is used
        assert out.shape == (2, 7, 768)
        out.square().mean().backward()
    else:
        loss, _, n = label_smoothed_nll(net(tokens, tokens), tokens, 0.1, 1)
        (loss / n).backward()
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad)


def test_kept_study_runs_rebuild_the_readme_table(tmp_path):
    """The CPU-study records in experiments/macaron/runs/cpu_study give the README's numbers."""
    from conftest import ROOT
    from odelab.report.views import render_view

    out, _ = render_view("macaron", "cpu_study", tmp_path)
    rows = [x for x in out.splitlines() if x.startswith("| ") and "_" in x]
    assert len(rows) == 2
    readme = (ROOT / "experiments" / "macaron" / "README.md").read_text()
    for line in rows:
        for cell in line.split("|")[3:-2]:
            assert cell.strip() in readme, cell
