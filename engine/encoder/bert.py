"""The BERT family as an encoder over packed tokens: BERT, RoBERTa and XLM-RoBERTa (absolute positions, post-norm).

Tokens arrive flat ([T] ids of several texts back to back, no padding), so every linear layer computes real tokens
only; attention alone sees the texts padded to the batch's longest ([B, heads, L, head_dim]) and masked, which stays
cheap because the engine batches texts of similar length. q/k/v are one fused projection.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from tide.engine.encoder.fused import linear_add, linear_gelu
from tide.engine.encoder.packing import PackedBatch

# HF architecture -> positions start after the padding index (RoBERTa's learned positions skip 0..padding_idx).
ARCHITECTURES = {"BertModel": False, "RobertaModel": True, "XLMRobertaModel": True}
_PREFIXES = ("bert.", "roberta.")
_UNUSED = ("pooler.", "cls.", "lm_head.", "embeddings.position_ids")


@dataclass
class BertArgs:
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    max_position_embeddings: int
    type_vocab_size: int
    layer_norm_eps: float
    position_offset: int  # added to 0-based positions (RoBERTa: padding_idx + 1)

    @classmethod
    def from_hf_config(cls, config, architecture: str) -> "BertArgs":
        if getattr(config, "hidden_act", "gelu") != "gelu":
            raise ValueError(f"hidden_act {config.hidden_act!r} is not supported by the BERT encoder; supported: gelu")
        if getattr(config, "position_embedding_type", "absolute") != "absolute":
            raise ValueError(f"position_embedding_type {config.position_embedding_type!r} is not supported; "
                             "supported: absolute")
        offset = (config.pad_token_id + 1) if ARCHITECTURES[architecture] else 0
        return cls(vocab_size=config.vocab_size, hidden_size=config.hidden_size,
                   num_layers=config.num_hidden_layers, num_heads=config.num_attention_heads,
                   intermediate_size=config.intermediate_size,
                   max_position_embeddings=config.max_position_embeddings,
                   type_vocab_size=config.type_vocab_size, layer_norm_eps=config.layer_norm_eps,
                   position_offset=offset)

    @property
    def max_tokens(self) -> int:
        """The longest input the position table covers."""
        return self.max_position_embeddings - self.position_offset


class SelfAttention(nn.Module):
    def __init__(self, args: BertArgs) -> None:
        super().__init__()
        self.num_heads, self.head_dim = args.num_heads, args.hidden_size // args.num_heads
        self.qkv = nn.Linear(args.hidden_size, 3 * args.hidden_size)
        self.out = nn.Linear(args.hidden_size, args.hidden_size)

    def forward(self, x: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
        """x: [T, hidden] -> x + attention output, [T, hidden]."""
        qkv = batch.pad(self.qkv(x)).view(batch.num_seqs, batch.max_len, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B, heads, L, head_dim]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=batch.key_mask)
        return linear_add(self.out, batch.unpad(out.transpose(1, 2)).flatten(1), x)


class EncoderLayer(nn.Module):
    def __init__(self, args: BertArgs) -> None:
        super().__init__()
        self.eps = args.layer_norm_eps
        self.attention = SelfAttention(args)
        self.attention_norm = nn.LayerNorm(args.hidden_size, eps=args.layer_norm_eps)
        self.intermediate = nn.Linear(args.hidden_size, args.intermediate_size)
        self.output = nn.Linear(args.intermediate_size, args.hidden_size)
        self.output_norm = nn.LayerNorm(args.hidden_size, eps=args.layer_norm_eps)

    def forward(self, h: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
        h = self.attention_norm(self.attention(h, batch))
        return self.output_norm(linear_add(self.output, linear_gelu(self.intermediate, h), h))


class BertEncoder(nn.Module):
    """`forward` returns the last hidden state of every packed token ([T, hidden])."""

    def __init__(self, args: BertArgs) -> None:
        super().__init__()
        self.args = args
        self.word_embeddings = nn.Embedding(args.vocab_size, args.hidden_size)
        self.position_embeddings = nn.Embedding(args.max_position_embeddings, args.hidden_size)
        self.token_type_embeddings = nn.Embedding(args.type_vocab_size, args.hidden_size)
        self.embeddings_norm = nn.LayerNorm(args.hidden_size, eps=args.layer_norm_eps)
        self.layers = nn.ModuleList(EncoderLayer(args) for _ in range(args.num_layers))

    @property
    def hidden_size(self) -> int:
        return self.args.hidden_size

    def forward(self, batch: PackedBatch) -> torch.Tensor:
        positions = batch.positions + self.args.position_offset
        # One segment per text: every token has type 0.
        h = self.word_embeddings(batch.input_ids) + self.position_embeddings(positions) + self.token_type_embeddings.weight[0]
        h = self.embeddings_norm(h)
        for layer in self.layers:
            h = layer(h, batch)
        return h

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copy HF-named tensors in, stacking query/key/value into the fused projection."""
        params = dict(self.named_parameters())
        loaded: set[str] = set()
        for hf_name, tensor in weights:
            name, row = _map_hf_name(hf_name, self.args.hidden_size)
            if name is None:
                continue
            if name not in params:
                raise ValueError(f"checkpoint tensor {hf_name!r} has no place in the BERT encoder")
            target = params[name].data
            if row is not None:
                target = target.narrow(0, row, self.args.hidden_size)
            if target.shape != tensor.shape:
                raise ValueError(f"checkpoint tensor {hf_name!r} has shape {tuple(tensor.shape)}, "
                                 f"expected {tuple(target.shape)}")
            target.copy_(tensor)
            loaded.add(name if row is None else f"{name}@{row}")
        missing = [n for n in params if n not in {x.split("@")[0] for x in loaded}]
        if missing:
            raise ValueError(f"checkpoint is missing {len(missing)} tensors of the BERT encoder, e.g. {missing[:3]}")


_RENAMES = {
    "embeddings.word_embeddings": "word_embeddings", "embeddings.position_embeddings": "position_embeddings",
    "embeddings.token_type_embeddings": "token_type_embeddings", "embeddings.LayerNorm": "embeddings_norm",
    "attention.output.dense": "attention.out", "attention.output.LayerNorm": "attention_norm",
    "intermediate.dense": "intermediate", "output.dense": "output", "output.LayerNorm": "output_norm",
}
_QKV = {"query": 0, "key": 1, "value": 2}


def _map_hf_name(hf_name: str, hidden: int) -> tuple[str | None, int | None]:
    """HF checkpoint name -> (our parameter name, row offset inside the fused qkv weight or None); None to skip."""
    name = next((hf_name.removeprefix(p) for p in _PREFIXES if hf_name.startswith(p)), hf_name)
    if name.startswith(_UNUSED):
        return None, None
    name = name.replace("encoder.layer.", "layers.")
    if ".attention.self." in name:
        layer, rest = name.split(".attention.self.")
        which, kind = rest.split(".")
        return f"{layer}.attention.qkv.{kind}", _QKV[which] * hidden
    for old, new in _RENAMES.items():
        if old in name:
            return name.replace(old, new), None
    return name, None
