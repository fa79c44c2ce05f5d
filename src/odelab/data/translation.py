"""Machine translation data, prepared as fairseq's ``prepare-iwslt14.sh`` does.

Pipeline (every corpus): Moses tokenisation (``sacremoses``, with Moses' default escaping),
optional lower-casing, length/ratio cleaning of the training pairs (``clean-corpus-n.perl``:
keep 1 <= len <= max_len and len ratio <= ratio), joint BPE learned on source + target training
text (``subword-nmt``), a joined dictionary, token-based batching (``max_tokens``) over
length-sorted batches. The result is cached under ``cache_dir`` keyed by every parameter.

Corpora, in their canonical on-disk formats:

- ``multi30k``: ``<data_dir>/multi30k/raw/{train,val,test_2016_flickr}.{de,en}.gz``.
- ``iwslt14``: ``<data_dir>/iwslt14/de-en/`` as extracted from fairseq's ``de-en.tgz``
  (``train.tags.de-en.{de,en}``, ``IWSLT14.TED*.de-en.{de,en}.xml``); valid = every 23rd
  training line, test = dev2010 + tst2010-2012 + TEDX dev2012.
- ``wmt14``: ``<data_dir>/wmt14_en_de/`` with the WMT archives' files (Europarl v7, CommonCrawl,
  News Commentary v12; newstest2013 dev; newstest2014 ``test-full`` sgm).
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import logging
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Sampler

from odelab.data.base import mix_seed
from odelab.data.download import download_url, extract_archive, md5sum
from odelab.data.errors import DatasetError

log = logging.getLogger(__name__)

BOS, PAD, EOS, UNK = "<s>", "<pad>", "</s>", "<unk>"  # fairseq's order: ids 0, 1, 2, 3

# ---------------------------------------------------------------- corpora: download + read

IWSLT14_URL = "http://dl.fbaipublicfiles.com/fairseq/data/iwslt14/de-en.tgz"
IWSLT14_SIZE = 19_982_877  # bytes (fairseq issue #1493); its md5 was not available offline
IWSLT14_TEST = [
    "IWSLT14.TED.dev2010",
    "IWSLT14.TEDX.dev2012",
    "IWSLT14.TED.tst2010",
    "IWSLT14.TED.tst2011",
    "IWSLT14.TED.tst2012",
]
WMT14_URLS = [
    "http://statmt.org/wmt13/training-parallel-europarl-v7.tgz",
    "http://statmt.org/wmt13/training-parallel-commoncrawl.tgz",
    "http://data.statmt.org/wmt17/translation-task/training-parallel-nc-v12.tgz",
    "http://data.statmt.org/wmt17/translation-task/dev.tgz",
    "http://statmt.org/wmt14/test-full.tgz",
]
WMT14_TRAIN = [
    "training/europarl-v7.de-en",
    "commoncrawl.de-en",
    "training/news-commentary-v12.de-en",
]
MULTI30K_MD5 = {  # the multi30k/dataset repository's files (shared/data/README.md)
    "train.de.gz": "81ff90b99829c0cd4b1b587d394afd39",
    "train.en.gz": "0065d13af80720a55ca8153d126e6627",
    "val.de.gz": "6e0e229eb049e3fc99a1ef02fb2d5f91",
    "val.en.gz": "2b69aa9253948ac9f67e94917272dd40",
    "test_2016_flickr.de.gz": "efd67d314d98489b716b145475101932",
    "test_2016_flickr.en.gz": "ff2c0fcb4893a13bd73414306bc250ae",
}
MULTI30K_URL = "https://raw.githubusercontent.com/multi30k/dataset/master/data/task1/raw/"


def _read_lines(path: Path) -> list[str]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f]


def _need(paths: Sequence[Path], how: str) -> None:
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise DatasetError("missing translation file(s):\n  " + "\n  ".join(missing) + "\n" + how)


def _strip_iwslt_train(lines: list[str]) -> list[str]:
    """prepare-iwslt14.sh: drop <url>/<talkid>/<keywords> lines, strip title/description tags."""
    out = []
    for line in lines:
        if any(t in line for t in ("<url>", "<talkid>", "<keywords>")):
            continue
        out.append(re.sub(r"</?(title|description)>", "", line))
    return out


def _iwslt_xml_segments(lines: list[str]) -> list[str]:
    """prepare-iwslt14.sh: keep ``<seg id=...>`` lines, strip the tags, map ’ to '."""
    segs = []
    for line in lines:
        if "<seg id" in line:
            s = re.sub(r'<seg id="[0-9]*">\s*', "", line)
            segs.append(re.sub(r"\s*</seg>\s*", "", s).replace("\u2019", "'"))
    return segs


def _sgm_segments(lines: list[str]) -> list[str]:
    return [re.sub(r"<seg id=\"[^\"]*\">\s*|\s*</seg>\s*", "", x) for x in lines if "<seg" in x]


def _read_multi30k(data_dir: Path, src: str, tgt: str, download: bool) -> dict:
    root = data_dir / "multi30k" / "raw"
    names = {"train": "train", "valid": "val", "test": "test_2016_flickr"}
    paths = [root / f"{n}.{lang}.gz" for n in names.values() for lang in (src, tgt)]
    if download and not all(p.is_file() for p in paths):
        for p in paths:
            download_url(MULTI30K_URL + p.name, p, MULTI30K_MD5.get(p.name))
    _need(paths, f"Multi30k: put the multi30k/dataset task1 raw files in {root} "
                 f"(data.download=true fetches them from {MULTI30K_URL}).")  # fmt: skip
    return {
        split: (_read_lines(root / f"{n}.{src}.gz"), _read_lines(root / f"{n}.{tgt}.gz"))
        for split, n in names.items()
    }


def _read_iwslt14(data_dir: Path, src: str, tgt: str, download: bool) -> dict:
    root = data_dir / "iwslt14" / "de-en"
    pair = f"{min(src, tgt)}-{max(src, tgt)}"
    train = [root / f"train.tags.{pair}.{lang}" for lang in (src, tgt)]
    test = [root / f"{n}.{pair}.{lang}.xml" for n in IWSLT14_TEST for lang in (src, tgt)]
    if download and not all(p.is_file() for p in train + test):
        archive = data_dir / "iwslt14" / "de-en.tgz"
        if not archive.is_file():
            download_url(IWSLT14_URL, archive)
        if archive.stat().st_size != IWSLT14_SIZE:
            raise DatasetError(
                f"{archive} has {archive.stat().st_size} bytes, not the {IWSLT14_SIZE} of "
                f"fairseq's de-en.tgz; delete it and download {IWSLT14_URL} again"
            )
        log.info("IWSLT14 archive md5 %s", md5sum(archive))
        extract_archive(archive, data_dir / "iwslt14")
    _need(train + test, f"IWSLT14: run with data.download=true (fetches {IWSLT14_URL}, "
          f"{IWSLT14_SIZE} bytes) or extract de-en.tgz into {root.parent}.")  # fmt: skip
    segs = {lang: [seg for n in IWSLT14_TEST for seg in _iwslt_xml_segments(
        _read_lines(root / f"{n}.{pair}.{lang}.xml"))] for lang in (src, tgt)}  # fmt: skip
    return {"train": tuple(_strip_iwslt_train(_read_lines(p)) for p in train),
            "test": (segs[src], segs[tgt])}  # fmt: skip


def _read_wmt14(data_dir: Path, src: str, tgt: str, download: bool) -> dict:
    root = data_dir / "wmt14_en_de"
    train = [root / f"{c}.{lang}" for c in WMT14_TRAIN for lang in (src, tgt)]
    dev = [root / "dev" / f"newstest2013.{lang}" for lang in (src, tgt)]
    test = [root / "test-full" / f"newstest2014-deen-{'src' if lang == 'en' else 'ref'}.{lang}.sgm"
            for lang in (src, tgt)]  # fmt: skip
    if download and not all(p.is_file() for p in train + dev + test):
        for url in WMT14_URLS:
            archive = root / url.rsplit("/", 1)[1]
            if not archive.is_file():
                download_url(url, archive)  # md5s of the WMT archives are not published
            extract_archive(archive, root)
    _need(train + dev + test, f"WMT14 En-De: run with data.download=true (fetches "
          f"{', '.join(WMT14_URLS)}) or extract them into {root}.")  # fmt: skip
    tr = {lang: [x for c in WMT14_TRAIN for x in _read_lines(root / f"{c}.{lang}")]
          for lang in (src, tgt)}  # fmt: skip
    return {
        "train": (tr[src], tr[tgt]),
        "valid": tuple(_read_lines(p) for p in dev),
        "test": tuple(_sgm_segments(_read_lines(p)) for p in test),
    }


# corpus -> reader(data_dir, src, tgt, download): the files of the module docstring
CORPUS_READERS = {"multi30k": _read_multi30k, "iwslt14": _read_iwslt14, "wmt14": _read_wmt14}


def read_corpus(corpus: str, data_dir: str | Path, src: str, tgt: str, download: bool = False):
    """Raw aligned text {split: (src lines, tgt lines)} of a corpus in its canonical format.

    IWSLT14 and WMT14 training text comes back untokenised; the split of IWSLT's valid set
    (every 23rd line after cleaning) happens in :func:`prepare`.
    """
    if corpus not in CORPUS_READERS:
        raise ValueError(f"corpus={corpus!r}: use {', '.join(CORPUS_READERS)}")
    return CORPUS_READERS[corpus](Path(data_dir), src, tgt, download)


# ---------------------------------------------------------------- text processing


def tokenize(lines: Sequence[str], lang: str, lowercase: bool, aggressive_dash=False):
    """Moses ``tokenizer.perl -l lang`` (escaping on, as the fairseq scripts run it), then
    ``lowercase.perl`` if asked. Returns lists of tokens."""
    from sacremoses import MosesTokenizer

    mt = MosesTokenizer(lang=lang)
    out = []
    for line in lines:
        s = mt.tokenize(line.strip(), escape=True, aggressive_dash_splits=aggressive_dash)
        out.append([w.lower() for w in s] if lowercase else s)
    return out


def detokenize(tokens: Sequence[str], lang: str) -> str:
    """Moses detokenisation (un-escapes), for sacreBLEU."""
    from sacremoses import MosesDetokenizer

    return MosesDetokenizer(lang=lang).detokenize(list(tokens))


def clean_pairs(src, tgt, ratio: float = 1.5, min_len: int = 1, max_len: int = 175):
    """``clean-corpus-n.perl -ratio r corpus src tgt out min max``: indices of the kept pairs."""
    keep = []
    for i, (s, t) in enumerate(zip(src, tgt)):
        a, b = len(s), len(t)
        if not (min_len <= a <= max_len and min_len <= b <= max_len):
            continue
        if a / b > ratio or b / a > ratio:
            continue
        keep.append(i)
    return keep


def learn_bpe(token_lines: Sequence[Sequence[str]], merges: int) -> str:
    """Joint BPE codes (``subword-nmt learn-bpe -s merges``) learned on the given lines."""
    from subword_nmt.learn_bpe import learn_bpe as _learn

    text = io.StringIO("\n".join(" ".join(t) for t in token_lines) + "\n")
    out = io.StringIO()
    with contextlib.redirect_stderr(io.StringIO()):  # subword-nmt's progress bar
        _learn(text, out, merges)
    return out.getvalue()


class BPECodes:
    """``subword-nmt apply-bpe`` with separator ``@@``; :meth:`remove` is ``--remove-bpe``."""

    def __init__(self, codes: str):
        from subword_nmt.apply_bpe import BPE

        self.bpe = BPE(io.StringIO(codes))

    def apply(self, tokens: Sequence[str]) -> list[str]:
        return self.bpe.process_line(" ".join(tokens)).split()

    @staticmethod
    def remove(pieces: Sequence[str]) -> list[str]:
        return (" ".join(pieces) + " ").replace("@@ ", "").split()


class Dictionary:
    """Joined vocabulary: ``<s> <pad> </s> <unk>`` then symbols by descending count."""

    def __init__(self, symbols: Sequence[str]):
        self.symbols = list(symbols)
        self.index = {s: i for i, s in enumerate(self.symbols)}
        self.bos, self.pad, self.eos, self.unk = (self.index[s] for s in (BOS, PAD, EOS, UNK))

    @classmethod
    def build(cls, lines: Sequence[Sequence[str]], min_count: int = 1) -> Dictionary:
        counts = Counter(w for line in lines for w in line)
        ranked = sorted(
            (w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w)
        )
        return cls([BOS, PAD, EOS, UNK, *ranked])

    def __len__(self) -> int:
        return len(self.symbols)

    def encode(self, pieces: Sequence[str]) -> list[int]:
        return [self.index.get(p, self.unk) for p in pieces] + [self.eos]

    def decode(self, ids: Sequence[int]) -> list[str]:
        return [self.symbols[i] for i in ids if i not in (self.bos, self.pad, self.eos)]


def prepare(
    corpus,
    data_dir,
    src,
    tgt,
    *,
    lowercase=True,
    bpe_merges=10_000,
    clean_ratio=1.5,
    max_len=175,
    valid_every=23,
    train_subset=None,
    eval_subset=None,
    download=False,
) -> dict:
    """Run the pipeline; return {"codes", "symbols", splits: {name: {"src", "tgt" (id lists),
    "ref_tok" (tokenised, cased as the model sees it), "ref_raw" (raw target text)}}}."""
    raw = read_corpus(corpus, data_dir, src, tgt, download)
    dash = corpus == "wmt14"  # prepare-wmt14en2de.sh tokenises with -a
    tr_s, tr_t = raw["train"]
    if len(tr_s) != len(tr_t):
        raise DatasetError(f"{corpus}: train has {len(tr_s)} {src} but {len(tr_t)} {tgt} lines")
    if train_subset:
        tr_s, tr_t = tr_s[:train_subset], tr_t[:train_subset]
    ts, tt = tokenize(tr_s, src, False, dash), tokenize(tr_t, tgt, False, dash)
    keep = clean_pairs(ts, tt, clean_ratio, 1, max_len)
    if lowercase:  # prepare-iwslt14.sh: clean, then lower-case
        ts, tt = ([[w.lower() for w in x] for x in y] for y in (ts, tt))
    ts, tt = [ts[i] for i in keep], [tt[i] for i in keep]
    raw_t = [tr_t[i] for i in keep]
    splits_tok: dict[str, tuple] = {}
    if "valid" in raw:
        splits_tok["train"] = (ts, tt, raw_t)
    else:  # every ``valid_every``-th line (1-based) of the cleaned training text is valid
        is_val = [(i + 1) % valid_every == 0 for i in range(len(ts))]
        pick = lambda xs, v: [x for x, f in zip(xs, is_val) if f == v]  # noqa: E731
        splits_tok["train"] = (pick(ts, False), pick(tt, False), pick(raw_t, False))
        splits_tok["valid"] = (pick(ts, True), pick(tt, True), pick(raw_t, True))
    for split in ("valid", "test"):
        if split in raw:
            s_lines, t_lines = raw[split]
            if eval_subset:
                s_lines, t_lines = s_lines[:eval_subset], t_lines[:eval_subset]
            splits_tok[split] = (
                tokenize(s_lines, src, lowercase, dash),
                tokenize(t_lines, tgt, lowercase, dash),
                list(t_lines),
            )
    if not splits_tok["train"][0]:
        raise DatasetError(f"{corpus}: no training pairs left after cleaning")
    codes = learn_bpe(splits_tok["train"][0] + splits_tok["train"][1], bpe_merges)
    bpe = BPECodes(codes)
    pieces = {
        k: ([bpe.apply(x) for x in v[0]], [bpe.apply(x) for x in v[1]])
        for k, v in splits_tok.items()
    }
    vocab = Dictionary.build(pieces["train"][0] + pieces["train"][1])
    out = {"codes": codes, "symbols": vocab.symbols, "splits": {}}
    for k, (ps, pt) in pieces.items():
        out["splits"][k] = {
            "src": [vocab.encode(x) for x in ps],
            "tgt": [vocab.encode(x) for x in pt],
            "ref_tok": [" ".join(x) for x in splits_tok[k][1]],
            "ref_raw": splits_tok[k][2],
        }
    return out


# ---------------------------------------------------------------- batching


def token_batches(src_lens, tgt_lens, max_tokens: int, max_sentences: int | None = None):
    """fairseq's ``batch_by_size``: indices sorted by (src, tgt) length (length buckets), cut
    into batches whose padded size ``n * max(len)`` stays <= ``max_tokens``."""
    order = sorted(range(len(src_lens)), key=lambda i: (src_lens[i], tgt_lens[i], i))
    batches, cur, longest = [], [], 0
    for i in order:
        n = max(src_lens[i], tgt_lens[i])
        if n > max_tokens:
            raise ValueError(
                f"a sentence of {n} tokens does not fit data.max_tokens={max_tokens}; raise "
                "max_tokens or lower data.max_len"
            )
        new_longest = max(longest, n)
        full = max_sentences is not None and len(cur) >= max_sentences
        if cur and ((len(cur) + 1) * new_longest > max_tokens or full):
            batches.append(cur)
            cur, new_longest = [], n
        cur.append(i)
        longest = new_longest
    if cur:
        batches.append(cur)
    return batches


class ShuffledBatchSampler(Sampler[list[int]]):
    """Fixed length-bucketed batches in an order that is a pure function of (seed, epoch);
    under DDP each rank takes every ``world``-th batch."""

    def __init__(self, batches, shuffle: bool, seed: int = 0):
        self.batches, self.shuffle, self.seed, self.epoch = batches, shuffle, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _shard(self, order):
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            r, w = torch.distributed.get_rank(), torch.distributed.get_world_size()
            order = order[: len(order) - len(order) % w][r::w] if len(order) >= w else order
        return order

    def __len__(self) -> int:
        return len(self._shard(list(range(len(self.batches)))))

    def __iter__(self) -> Iterator[list[int]]:
        order = list(range(len(self.batches)))
        if self.shuffle:
            g = torch.Generator().manual_seed(mix_seed(self.seed, self.epoch))
            order = torch.randperm(len(order), generator=g).tolist()
        for i in self._shard(order):
            yield self.batches[i]


class _PairDataset(torch.utils.data.Dataset):
    def __init__(self, src, tgt):
        self.src, self.tgt = src, tgt

    def __len__(self):
        return len(self.src)

    def __getitem__(self, i):
        return i, self.src[i], self.tgt[i]


def collate_pairs(items, pad: int, bos: int):
    """-> (src [B,S] (EOS-terminated), prev [B,T] (BOS + tgt[:-1]), tgt [B,T], ids [B])."""
    ids = torch.tensor([i for i, _, _ in items])
    s_len = max(len(s) for _, s, _ in items)
    t_len = max(len(t) for _, _, t in items)
    src = torch.full((len(items), s_len), pad, dtype=torch.long)
    tgt = torch.full((len(items), t_len), pad, dtype=torch.long)
    prev = torch.full((len(items), t_len), pad, dtype=torch.long)
    for k, (_, s, t) in enumerate(items):
        src[k, : len(s)] = torch.tensor(s)
        tgt[k, : len(t)] = torch.tensor(t)
        prev[k, 0] = bos
        prev[k, 1 : len(t)] = torch.tensor(t[:-1])
    return src, prev, tgt, ids


class TranslationDataModule(pl.LightningDataModule):
    """A prepared translation corpus (see module docstring) with token-based batches.

    Args:
        corpus: multi30k | iwslt14 | wmt14.
        src_lang, tgt_lang: language codes (e.g. de, en).
        lowercase, bpe_merges, clean_ratio, max_len, valid_every: the pipeline's settings.
        train_subset: keep only the first N training pairs (CPU-scale runs); ``eval_subset``
            the first N of the valid and test splits (tests).
        max_tokens: padded tokens per batch (fairseq ``--max-tokens``); ``eval_max_tokens`` for
            validation/test (default: the same); ``max_sentences`` caps sentences per batch.
        cache_dir: where the prepared corpus is cached, one file per parameter set.
        download: fetch missing canonical files (users with internet; never in tests).
    """

    def __init__(
        self,
        corpus: str = "multi30k",
        data_dir: str = "data",
        src_lang: str = "de",
        tgt_lang: str = "en",
        lowercase: bool = True,
        bpe_merges: int = 10_000,
        clean_ratio: float = 1.5,
        max_len: int = 175,
        valid_every: int = 23,
        train_subset: int | None = None,
        eval_subset: int | None = None,
        max_tokens: int = 4096,
        eval_max_tokens: int | None = None,
        max_sentences: int | None = None,
        cache_dir: str = "data/cache",
        seed: int = 0,
        num_workers: int = 0,
        pin_memory: bool = False,
        download: bool = False,
    ):
        super().__init__()
        self.corpus, self.data_dir, self.cache_dir = corpus, data_dir, Path(cache_dir)
        self.src_lang, self.tgt_lang = src_lang, tgt_lang
        self.params = dict(
            corpus=corpus,
            src=src_lang,
            tgt=tgt_lang,
            lowercase=lowercase,
            bpe_merges=bpe_merges,
            clean_ratio=clean_ratio,
            max_len=max_len,
            valid_every=valid_every,
            train_subset=train_subset,
        )
        if eval_subset:  # not in the key of a full-size cache
            self.params["eval_subset"] = eval_subset
        self.lowercase = lowercase
        self.max_tokens, self.max_sentences = max_tokens, max_sentences
        self.eval_max_tokens = eval_max_tokens or max_tokens
        self.seed, self.num_workers, self.download = seed, num_workers, download
        self.pin_memory = pin_memory
        self.data: dict | None = None

    @property
    def cache_file(self) -> Path:
        key = hashlib.sha1(json.dumps(self.params, sort_keys=True).encode()).hexdigest()[:12]
        return self.cache_dir / f"{self.corpus}-{self.src_lang}{self.tgt_lang}-{key}.pt"

    def prepare_data(self) -> None:
        if self.cache_file.is_file():
            return
        log.info("preparing %s (%s) -> %s", self.corpus, self.params, self.cache_file)
        p = {k: v for k, v in self.params.items() if k not in ("corpus", "src", "tgt")}
        data = prepare(
            self.corpus, self.data_dir, self.src_lang, self.tgt_lang, download=self.download, **p
        )
        data["params"] = self.params
        self.cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.cache_file.with_suffix(".tmp")
        torch.save(data, tmp)
        tmp.replace(self.cache_file)

    def setup(self, stage: str | None = None) -> None:
        if self.data is not None:
            return
        if not self.cache_file.is_file():
            self.prepare_data()
        self.data = torch.load(self.cache_file, weights_only=True)
        self.vocab = Dictionary(self.data["symbols"])
        self.bpe_codes = self.data["codes"]

    @property
    def vocab_size(self) -> int:
        self.setup()
        return len(self.vocab)

    def split(self, name: str) -> dict:
        self.setup()
        return self.data["splits"][name]

    def _loader(self, name: str, train: bool) -> DataLoader:
        sp = self.split(name)
        s_lens, t_lens = [len(x) for x in sp["src"]], [len(x) for x in sp["tgt"]]
        mt = self.max_tokens if train else self.eval_max_tokens
        batches = token_batches(s_lens, t_lens, mt, self.max_sentences)
        sampler = ShuffledBatchSampler(batches, shuffle=train, seed=self.seed)
        pad, bos = self.vocab.pad, self.vocab.bos
        return DataLoader(
            _PairDataset(sp["src"], sp["tgt"]),
            batch_sampler=sampler,
            collate_fn=lambda items: collate_pairs(items, pad, bos),
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("valid", False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", False)

    def to_text(self, ids: Sequence[int]) -> tuple[str, str]:
        """Token ids -> (tokenised text with BPE removed, detokenised text)."""
        words = BPECodes.remove(self.vocab.decode(ids))
        return " ".join(words), detokenize(words, self.tgt_lang)
