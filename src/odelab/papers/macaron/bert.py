"""Macaron BERT: a bidirectional encoder of Macaron (or standard) layers, with masked-LM and
next-sentence heads (pre-training) and a sentence(-pair) classification/regression head (GLUE).

Official quirks kept (spec Sec. 2.4, 3.1): pre-norm, LayerNorm without affine parameters, the
first (half-step) FFN uses ReLU and the second GELU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from odelab.nn.transformer import (
    TransformerLayer,
    TransformerStack,
    make_embedding,
    standard_steps,
)
from odelab.papers.macaron.model import macaron_steps


class BertEncoder(nn.Module):
    """Token + learned position + segment embeddings, ``layers`` encoder layers, final LN."""

    def __init__(
        self,
        vocab_size: int = 32_768,
        d_model: int = 768,
        heads: int = 12,
        layers: int = 12,
        ffn_dim: int = 3072,
        macaron: bool = True,
        norm: str = "pre",
        dropout: float = 0.1,
        attn_dropout: float = 0.1,
        act_dropout: float = 0.0,
        ln_affine: bool = False,
        max_positions: int = 384,
        num_segments: int = 2,
        padding_idx: int = 1,
        act_first_ffn: str = "relu",
        act_second_ffn: str = "gelu",
    ):
        super().__init__()
        if macaron:
            steps = macaron_steps(ffn_dim, False, 0.5, "half", act_first_ffn, act_second_ffn)
        else:
            steps = standard_steps(ffn_dim, False, act_second_ffn)
        kw = dict(norm=norm, dropout=dropout, attn_dropout=attn_dropout, act_dropout=act_dropout)
        self.stack = TransformerStack(
            make_embedding(vocab_size, d_model, padding_idx),
            [
                TransformerLayer(d_model, heads, steps, ln_affine=ln_affine, **kw)
                for _ in range(layers)
            ],
            norm,
            dropout,
            ln_affine=ln_affine,
            learned_positions=max_positions,
        )
        self.segment = nn.Embedding(num_segments, d_model) if num_segments else None
        self.padding_idx, self.d_model, self.vocab_size = padding_idx, d_model, vocab_size
        self.max_positions, self.macaron = max_positions, macaron

    def forward(self, tokens: torch.Tensor, segments: torch.Tensor | None = None) -> torch.Tensor:
        """tokens [B, T] -> hidden states [B, T, d]."""
        if tokens.shape[1] > self.max_positions:
            raise ValueError(
                f"sequence length {tokens.shape[1]} > max_positions={self.max_positions}; "
                "truncate the data (data.max_len) or raise model.net.max_positions"
            )
        seg = None
        if self.segment is not None and segments is not None:
            seg = self.segment(segments)
        return self.stack(tokens, tokens.eq(self.padding_idx), extra_embed=seg)


class BertPretrainHeads(nn.Module):
    """Masked-LM head (dense-GELU-LN, then the tied embedding + bias) and next-sentence head
    (tanh pooler on the first token, then 2-way linear)."""

    def __init__(self, encoder: BertEncoder):
        super().__init__()
        d = encoder.d_model
        self.encoder = encoder
        self.lm_dense, self.lm_norm = nn.Linear(d, d), nn.LayerNorm(d)
        self.lm_bias = nn.Parameter(torch.zeros(encoder.vocab_size))
        self.pooler, self.nsp = nn.Linear(d, d), nn.Linear(d, 2)

    def forward(self, tokens, segments=None):
        h = self.encoder(tokens, segments)
        lm = self.lm_norm(F.gelu(self.lm_dense(h)))
        lm_logits = F.linear(lm, self.encoder.stack.embed.weight, self.lm_bias)
        nsp_logits = self.nsp(torch.tanh(self.pooler(h[:, 0])))
        return lm_logits, nsp_logits


class BertClassifier(nn.Module):
    """GLUE head: tanh pooler on the first token, dropout, linear to ``num_classes`` (1 for
    regression, STS-B)."""

    def __init__(self, encoder: BertEncoder, num_classes: int = 2, dropout: float = 0.1):
        super().__init__()
        self.encoder, self.num_classes, self.dropout = encoder, num_classes, dropout
        self.pooler = nn.Linear(encoder.d_model, encoder.d_model)
        self.head = nn.Linear(encoder.d_model, num_classes)

    def forward(self, tokens, segments=None):
        h = torch.tanh(self.pooler(self.encoder(tokens, segments)[:, 0]))
        return self.head(F.dropout(h, self.dropout, self.training))
