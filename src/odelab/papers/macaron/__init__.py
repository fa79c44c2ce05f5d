"""Macaron Net (Lu et al. 2019): Transformer layers as Strang-Marchuk splitting steps."""

from odelab.papers.macaron.bert import BertClassifier, BertEncoder, BertPretrainHeads
from odelab.papers.macaron.model import MacaronTransformer, macaron_steps

__all__ = [
    "BertClassifier",
    "BertEncoder",
    "BertPretrainHeads",
    "MacaronTransformer",
    "macaron_steps",
]
