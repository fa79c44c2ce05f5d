"""BERT-style data: a plain-text pre-training corpus (masked LM + next sentence) and the GLUE
tasks in their canonical TSV files.

Text goes through the translation pipeline's pieces: Moses tokenisation, lower-casing, BPE
(``subword-nmt``) and a dictionary with ``<s>`` (CLS), ``</s>`` (SEP), ``<pad>``, ``<unk>`` and
``<mask>``. A GLUE datamodule reuses a pre-training corpus' BPE codes and vocabulary
(``vocab_from``: its cache file) so that a pre-trained encoder can be fine-tuned; without it,
BPE and vocabulary are learned on the task's training text.

Canonical formats:

- pre-training: ``<data_dir>/bert_corpus/{train,valid}.txt``, one sentence per line, documents
  separated by blank lines (the input of Google BERT's ``create_pretraining_data.py``).
- GLUE: ``<data_dir>/glue/<TASK>/{train,dev}.tsv`` as ``download_glue_data.py`` writes them
  (MNLI: ``dev_matched.tsv`` / ``dev_mismatched.tsv``).
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import random
import zipfile
from dataclasses import dataclass
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset

from odelab.data.base import EpochSeededRandomSampler
from odelab.data.download import download_url
from odelab.data.errors import DatasetError
from odelab.data.translation import BPECodes, Dictionary, learn_bpe, tokenize

log = logging.getLogger(__name__)

MASK = "<mask>"
# The zip files jiant's and fairseq's GLUE download scripts fetch (not checked offline).
GLUE_URL = "https://dl.fbaipublicfiles.com/glue/data/{}.zip"


@dataclass(frozen=True)
class GlueTask:
    """Columns of one GLUE task's TSV: sentence column(s), label column, header, labels."""

    folder: str
    a: int
    b: int | None
    label: int
    header: bool
    labels: tuple[str, ...] | None  # None: regression (STS-B)
    dev: str = "dev.tsv"


GLUE_TASKS = {
    "cola": GlueTask("CoLA", 3, None, 1, False, ("0", "1")),
    "sst2": GlueTask("SST-2", 0, None, 1, True, ("0", "1")),
    "mrpc": GlueTask("MRPC", 3, 4, 0, True, ("0", "1")),
    "stsb": GlueTask("STS-B", 7, 8, -1, True, None),
    "qqp": GlueTask("QQP", 3, 4, 5, True, ("0", "1")),
    "mnli": GlueTask(
        "MNLI", 8, 9, -1, True, ("contradiction", "entailment", "neutral"), dev="dev_matched.tsv"
    ),
    "mnli_mm": GlueTask(
        "MNLI",
        8,
        9,
        -1,
        True,
        ("contradiction", "entailment", "neutral"),
        dev="dev_mismatched.tsv",
    ),
    "qnli": GlueTask("QNLI", 1, 2, 3, True, ("entailment", "not_entailment")),
    "rte": GlueTask("RTE", 1, 2, 3, True, ("entailment", "not_entailment")),
}


def read_glue(task: str, path: Path) -> tuple[list[str], list[str] | None, list[float | int]]:
    """(sentence A list, sentence B list or None, labels) of one canonical GLUE TSV."""
    t = GLUE_TASKS[task]
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    if t.header:
        rows = rows[1:]
    a, b, y = [], [] if t.b is not None else None, []
    bad = []
    for k, r in enumerate(rows):
        if not r:
            continue
        try:
            lab = r[t.label]
            label = float(lab) if t.labels is None else t.labels.index(lab)
            sa, sb = r[t.a], (r[t.b] if b is not None else None)
        except (IndexError, ValueError) as e:
            bad.append(f"row {k + 1 + t.header}: {e}")
            continue
        a.append(sa)
        if b is not None:
            b.append(sb)
        y.append(label)
    # a handful of malformed rows exist in the real QQP/MNLI files: skip those, refuse a file
    # that is mostly malformed (a wrong task or a different format)
    if bad and len(bad) > 0.01 * max(len(rows), 1):
        raise DatasetError(
            f"{path}: {len(bad)} of {len(rows)} rows are not the canonical GLUE {t.folder} "
            f"format ({bad[0]}); is this the {t.folder} file from download_glue_data.py?"
        )
    if bad:
        log.warning("%s: skipped %d malformed rows (%s)", path, len(bad), bad[0])
    return a, b, y


def _text_pieces(lines, bpe: BPECodes, lowercase: bool) -> list[list[str]]:
    return [bpe.apply(x) for x in tokenize(lines, "en", lowercase)]


def _cache_path(cache_dir: str | Path, name: str, params: dict) -> Path:
    key = hashlib.sha1(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]
    return Path(cache_dir) / f"{name}-{key}.pt"


def _cache(cache_dir: Path, name: str, params: dict, build) -> dict:
    path = _cache_path(cache_dir, name, params)
    if not path.is_file():
        data = build()
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(data, path.with_suffix(".tmp"))
        path.with_suffix(".tmp").replace(path)
    data = torch.load(path, weights_only=True)
    data["cache_file"] = str(path)
    return data


def truncate_pair(a: list, b: list, room: int) -> tuple[list, list]:
    """Drop tokens from the end of the longer segment until len(a) + len(b) <= room."""
    a, b = list(a), list(b)
    while len(a) + len(b) > room:
        if len(a) >= len(b):
            a.pop()
        else:
            b.pop()
    return a, b


def _pad(seqs, pad: int) -> torch.Tensor:
    out = torch.full((len(seqs), max(len(s) for s in seqs)), pad, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.tensor(s)
    return out


class _EpochItems(Dataset):
    """Items that are a pure function of the epoch (BERT's random next sentences): made for the
    epoch :class:`_EpochOrder` moves them to."""

    def __init__(self, make, epoch: int = 0):
        self.make, self.epoch, self.items = make, epoch, make(epoch)

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch, self.items = epoch, self.make(epoch)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        return self.items[i]


class _EpochOrder(EpochSeededRandomSampler):
    """The (seed, epoch) training order (Lightning calls ``set_epoch`` every epoch, also after a
    resume: a resumed run sees the uninterrupted run's order); moves ``data`` to the epoch too
    when it depends on it."""

    def __init__(self, data, seed: int):
        super().__init__(len(data), seed)
        self.data = data

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        if isinstance(self.data, _EpochItems):
            self.data.set_epoch(epoch)


class BertCorpusDataModule(pl.LightningDataModule):
    """Sentence-pair instances for masked-LM + next-sentence pre-training.

    Each instance is ``<s> A </s> B </s>`` with segment ids 0/1, where B follows A in the same
    document (label 0, "is next") or is a random sentence from another document (label 1), each
    with probability 1/2, truncated to ``max_len`` tokens. Masking happens in the module.
    """

    def __init__(
        self,
        data_dir: str = "data",
        bpe_merges: int = 32_640,
        lowercase: bool = True,
        max_len: int = 384,
        batch_size: int = 32,
        cache_dir: str = "data/cache/bert",
        seed: int = 0,
        num_workers: int = 0,
        pin_memory: bool = False,
    ):
        super().__init__()
        self.root = Path(data_dir) / "bert_corpus"
        self.params = dict(bpe_merges=bpe_merges, lowercase=lowercase, root=str(self.root))
        self.max_len, self.batch_size, self.seed = max_len, batch_size, seed
        self.cache_dir, self.num_workers, self.pin_memory = cache_dir, num_workers, pin_memory
        self.data: dict | None = None

    def _build(self) -> dict:
        files = {s: self.root / f"{s}.txt" for s in ("train", "valid")}
        missing = [str(p) for p in files.values() if not p.is_file()]
        if missing:
            raise DatasetError(
                f"BERT corpus: missing {', '.join(missing)}. Put one sentence per line, documents "
                "separated by blank lines (English Wikipedia + BookCorpus in the paper; users "
                "build it themselves, see experiments/macaron/README.md)."
            )
        docs = {}
        for split, p in files.items():
            text = p.read_text(encoding="utf-8").split("\n\n")
            docs[split] = [[s for s in d.split("\n") if s.strip()] for d in text if d.strip()]
        flat = [s for d in docs["train"] for s in d]
        toks = tokenize(flat, "en", self.params["lowercase"])
        codes = learn_bpe(toks, self.params["bpe_merges"])
        bpe = BPECodes(codes)
        vocab = Dictionary.build([bpe.apply(t) for t in toks])
        symbols = [*vocab.symbols, MASK]
        vocab = Dictionary(symbols)
        out = {"codes": codes, "symbols": symbols, "splits": {}}
        for split, ds in docs.items():
            out["splits"][split] = [
                [vocab.encode(p)[:-1] for p in _text_pieces(d, bpe, self.params["lowercase"])]
                for d in ds
            ]
        return out

    def prepare_data(self) -> None:
        _cache(self.cache_dir, "bert_corpus", self.params, self._build)

    def setup(self, stage: str | None = None) -> None:
        if self.data is None:
            self.data = _cache(self.cache_dir, "bert_corpus", self.params, self._build)
            self.vocab = Dictionary(self.data["symbols"])
            self.mask_idx = self.vocab.index[MASK]

    @property
    def vocab_size(self) -> int:
        self.setup()
        return len(self.vocab)

    def instances(self, split: str, epoch: int) -> list[tuple[list[int], list[int], int]]:
        """(tokens, segments, is_random_next) for every sentence with a successor."""
        self.setup()
        docs = self.data["splits"][split]
        rng = random.Random(self.seed * 1_000_003 + epoch)
        v, out = self.vocab, []
        for di, d in enumerate(docs):
            for i in range(len(d) - 1):
                a, b, label = d[i], d[i + 1], 0
                if len(docs) > 1 and rng.random() < 0.5:
                    other = rng.choice([j for j in range(len(docs)) if j != di])
                    b, label = rng.choice(docs[other]), 1
                a, b = truncate_pair(a, b, self.max_len - 3)
                toks = [v.bos, *a, v.eos, *b, v.eos]
                out.append((toks, [0] * (len(a) + 2) + [1] * (len(b) + 1), label))
        return out

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        """Training: epoch ``e`` pairs its sentences with the draws of (seed, e) and visits them
        in the (seed, e) order; evaluation: epoch 0's pairs, in file order."""
        data = _EpochItems(lambda epoch: self.instances(split, epoch))
        if not len(data):
            raise DatasetError(f"BERT corpus {split}: no document has two sentences")
        pad = self.vocab.pad

        def collate(items):
            return (
                _pad([t for t, _, _ in items], pad),
                _pad([s for _, s, _ in items], 0),
                torch.tensor([y for _, _, y in items]),
            )

        return DataLoader(
            data,
            self.batch_size,
            sampler=_EpochOrder(data, self.seed) if shuffle else None,
            collate_fn=collate,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("valid", False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("valid", False)


class GlueDataModule(pl.LightningDataModule):
    """One GLUE task: ``(tokens, segments, label)`` batches of ``<s> A </s> [B </s>]``.

    ``test`` evaluates the dev set (GLUE test labels are private: the server scores them).
    """

    def __init__(
        self,
        task: str = "rte",
        data_dir: str = "data",
        vocab_from: str | None = None,
        bpe_merges: int = 8000,
        lowercase: bool = True,
        max_len: int = 384,
        batch_size: int = 32,
        eval_batch_size: int = 128,
        cache_dir: str = "data/cache/glue",
        seed: int = 0,
        num_workers: int = 0,
        pin_memory: bool = False,
        download: bool = False,
    ):
        super().__init__()
        if task not in GLUE_TASKS:
            raise ValueError(f"data.task={task!r}: use one of {sorted(GLUE_TASKS)}")
        self.task, self.spec = task, GLUE_TASKS[task]
        self.root = Path(data_dir) / "glue" / self.spec.folder
        self.vocab_from, self.download = vocab_from, download
        self.params = dict(
            task=task,
            root=str(self.root),
            vocab_from=vocab_from,
            bpe_merges=bpe_merges,
            lowercase=lowercase,
        )
        self.max_len, self.batch_size, self.eval_batch_size = max_len, batch_size, eval_batch_size
        self.cache_dir, self.seed, self.num_workers = cache_dir, seed, num_workers
        self.pin_memory = pin_memory
        self.num_classes = 1 if self.spec.labels is None else len(self.spec.labels)
        self.data: dict | None = None

    def _files(self) -> dict[str, Path]:
        files = {"train": self.root / "train.tsv", "dev": self.root / self.spec.dev}
        if self.download and not all(p.is_file() for p in files.values()):
            archive = self.root.parent / f"{self.spec.folder}.zip"
            download_url(GLUE_URL.format(self.spec.folder), archive)
            with zipfile.ZipFile(archive) as z:
                z.extractall(self.root.parent)
        missing = [str(p) for p in files.values() if not p.is_file()]
        if missing:
            raise DatasetError(
                f"GLUE {self.spec.folder}: missing {', '.join(missing)}. Run with "
                f"data.download=true (fetches {GLUE_URL.format(self.spec.folder)}) or put the "
                "files of download_glue_data.py there."
            )
        return files

    def _build(self) -> dict:
        files = self._files()
        lc = self.params["lowercase"]
        raw = {s: read_glue(self.task, p) for s, p in files.items()}
        if self.vocab_from:
            src = torch.load(self.vocab_from, weights_only=True)
            codes, symbols = src["codes"], src["symbols"]
        else:
            lines = raw["train"][0] + (raw["train"][1] or [])
            toks = tokenize(lines, "en", lc)
            codes = learn_bpe(toks, self.params["bpe_merges"])
            bpe0 = BPECodes(codes)
            symbols = [*Dictionary.build([bpe0.apply(t) for t in toks]).symbols, MASK]
        bpe, vocab = BPECodes(codes), Dictionary(symbols)
        out = {"codes": codes, "symbols": symbols, "splits": {}}
        for s, (a, b, y) in raw.items():
            pa = [vocab.encode(p)[:-1] for p in _text_pieces(a, bpe, lc)]
            pb = [vocab.encode(p)[:-1] for p in _text_pieces(b, bpe, lc)] if b else None
            out["splits"][s] = {"a": pa, "b": pb, "y": y}
        return out

    def prepare_data(self) -> None:
        _cache(self.cache_dir, f"glue_{self.task}", self.params, self._build)

    def setup(self, stage: str | None = None) -> None:
        if self.data is None:
            self.data = _cache(self.cache_dir, f"glue_{self.task}", self.params, self._build)
            self.vocab = Dictionary(self.data["symbols"])

    @property
    def vocab_size(self) -> int:
        self.setup()
        return len(self.vocab)

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        self.setup()
        sp, v = self.data["splits"][split], self.vocab
        items = []
        for i, a in enumerate(sp["a"]):
            b = sp["b"][i] if sp["b"] is not None else None
            room = self.max_len - (3 if b is not None else 2)
            a, b = (a[:room], None) if b is None else truncate_pair(a, b, room)
            toks = [v.bos, *a, v.eos] + ([*b, v.eos] if b is not None else [])
            segs = [0] * (len(a) + 2) + ([1] * (len(b) + 1) if b is not None else [])
            items.append((toks, segs, sp["y"][i]))
        regression = self.spec.labels is None

        def collate(batch):
            y = torch.tensor([t[2] for t in batch], dtype=torch.float if regression else None)
            return _pad([t[0] for t in batch], v.pad), _pad([t[1] for t in batch], 0), y

        bs = self.batch_size if shuffle else self.eval_batch_size
        return DataLoader(
            items,
            bs,
            sampler=_EpochOrder(items, self.seed) if shuffle else None,  # (seed, epoch) order
            collate_fn=collate,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("dev", False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("dev", False)
