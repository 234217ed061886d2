"""The Llama family over the paged KV cache: Llama 2/3, Mistral, Qwen2 (qkv bias), Qwen3 (q/k norm), SmolLM2.

Tokens arrive flat ([T] ids, no padding); each layer writes its new K/V into the paged cache and attends over it
through the `kernels` ops, so prefill chunks and decodes share one forward pass.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Protocol, runtime_checkable

import torch
from torch import nn
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from tide.kernels.metadata import AttentionMetadata


@dataclass
class ModelArgs:
    """The shape of a Llama-family model, read from its HF config."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    max_position_embeddings: int
    tie_word_embeddings: bool
    qkv_bias: bool
    o_bias: bool
    mlp_bias: bool
    qk_norm: bool
    inv_freq: torch.Tensor
    attention_scaling: float
    sliding_window: int | None

    @classmethod
    def from_hf_config(cls, config, architecture: str) -> "ModelArgs":
        num_heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // num_heads
        attention_bias = bool(getattr(config, "attention_bias", False))
        inv_freq, attention_scaling = _rope_parameters(config, head_dim)
        window = getattr(config, "sliding_window", None)
        if architecture.startswith("Qwen") and not getattr(config, "use_sliding_window", False):
            window = None
        return cls(
            vocab_size=config.vocab_size,
            hidden_size=config.hidden_size,
            intermediate_size=config.intermediate_size,
            num_layers=config.num_hidden_layers,
            num_heads=num_heads,
            num_kv_heads=getattr(config, "num_key_value_heads", None) or num_heads,
            head_dim=head_dim,
            rms_norm_eps=config.rms_norm_eps,
            max_position_embeddings=config.max_position_embeddings,
            tie_word_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
            qkv_bias=attention_bias or architecture == "Qwen2ForCausalLM",
            o_bias=attention_bias and architecture == "LlamaForCausalLM",
            mlp_bias=bool(getattr(config, "mlp_bias", False)),
            qk_norm=architecture == "Qwen3ForCausalLM",
            inv_freq=inv_freq,
            attention_scaling=attention_scaling,
            sliding_window=window,
        )


def _rope_parameters(config, head_dim: int) -> tuple[torch.Tensor, float]:
    """Inverse frequencies and cos/sin scaling as transformers computes them, so any rope_scaling type matches HF."""
    params = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type == "default":
        theta = params.get("rope_theta", getattr(config, "rope_theta", 10000.0))
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float) / head_dim))
        return inv_freq, 1.0
    if rope_type not in ROPE_INIT_FUNCTIONS or rope_type == "dynamic":
        raise ValueError(f"rope scaling type {rope_type!r} is not supported; supported: default, "
                         + ", ".join(sorted(t for t in ROPE_INIT_FUNCTIONS if t != "dynamic")))
    inv_freq, scaling = ROPE_INIT_FUNCTIONS[rope_type](config, torch.device("cpu"))
    return inv_freq.float(), float(scaling)


class LowRankUpdates(Protocol):
    """Adds a step's adapter updates to a projection's output, each to the rows of its own sequences
    (`engine/lora/batch.py`)."""

    def apply(self, linear: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class ArgmaxHead(Protocol):
    """A vocabulary head that finds each row's argmax for less than its full scores (NativeLinear with a screen,
    engine/models/cpu_linear.py): the scores it returns are exact only where they can be a row's largest."""

    def argmax_logits(self, hidden: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True)
class LastLayerRows:
    """The rows whose final hidden states a step uses: the last kept[b] query rows of each sequence b (the ones that
    sample). The last layer writes every row's K/V, then computes attention, projections and MLP for these rows
    only, since the other rows' outputs feed nothing: a prefill chunk's last layer shrinks to its sampling token."""

    kept: list[int]
    index: torch.Tensor  # [K] int64: the kept rows of the step's flat batch, in order
    attn: AttentionMetadata  # their layout: the same keys, fewer queries

    @classmethod
    def of(cls, attn: AttentionMetadata, kept: list[int]) -> LastLayerRows:
        rows: list[int] = []
        end = 0
        for query_len, n in zip(attn.query_lens_host, kept):
            end += query_len
            rows.extend(range(end - n, end))
        index = torch.tensor(rows, dtype=torch.int64, device=attn.seq_lens.device)
        return cls(kept=list(kept), index=index, attn=attn.suffixes(kept))


@dataclass
class ForwardContext:
    """Everything a layer needs about this step besides its own weights and cache."""

    positions: torch.Tensor  # [T] int64
    slot_mapping: torch.Tensor  # [T] int64
    attn: AttentionMetadata
    cos_sin_cache: torch.Tensor  # [max_pos, head_dim]
    lora: LowRankUpdates | None = None  # None: no row of this step uses a LoRA adapter
    last_rows: LastLayerRows | None = None  # None: the last layer computes every row (the model returns all)


def project(linear: nn.Module, x: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
    """`linear(x)`, plus the step's LoRA updates where rows use an adapter: the one hook LoRA has in the model."""
    y = linear(x)
    return y if ctx.lora is None else ctx.lora.apply(linear, x, y)


class Attention(nn.Module):
    def __init__(self, args: ModelArgs, ops) -> None:
        super().__init__()
        self.ops = ops
        self.num_heads, self.num_kv_heads, self.head_dim = args.num_heads, args.num_kv_heads, args.head_dim
        self.q_size = args.num_heads * args.head_dim
        self.kv_size = args.num_kv_heads * args.head_dim
        self.eps = args.rms_norm_eps
        self.scale = args.head_dim ** -0.5
        self.qkv_proj = nn.Linear(args.hidden_size, self.q_size + 2 * self.kv_size, bias=args.qkv_bias)
        self.o_proj = nn.Linear(self.q_size, args.hidden_size, bias=args.o_bias)
        self.q_norm = nn.Parameter(torch.ones(args.head_dim)) if args.qk_norm else None
        self.k_norm = nn.Parameter(torch.ones(args.head_dim)) if args.qk_norm else None

    def forward(self, x: torch.Tensor, ctx: ForwardContext, k_cache: torch.Tensor, v_cache: torch.Tensor,
                rows: LastLayerRows | None = None):
        """x: [T, hidden]; returns [T, hidden], or only `rows` when given (every row's K/V is written either way)."""
        T = x.shape[0]
        q, k, v = project(self.qkv_proj, x, ctx).split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q = q.reshape(T, self.num_heads, self.head_dim)
        k = k.reshape(T, self.num_kv_heads, self.head_dim)
        v = v.reshape(T, self.num_kv_heads, self.head_dim)
        if self.q_norm is not None:
            q = self.ops.rms_norm(q, self.q_norm, self.eps)
            k = self.ops.rms_norm(k, self.k_norm, self.eps)
        self.ops.rotary_write_kv_cache(ctx.positions, q, k, v, ctx.cos_sin_cache, True, k_cache, v_cache,
                                       ctx.slot_mapping)
        attn = ctx.attn
        if rows is not None:
            q, attn = q.index_select(0, rows.index), rows.attn
        out = self.ops.paged_attention(q, k_cache, v_cache, attn, self.scale)  # [rows, heads, head_dim]
        return project(self.o_proj, out.reshape(q.shape[0], self.q_size), ctx)


class FusedStep(Protocol):
    """One step's fused layers (NativeLayerRunner.step)."""

    def run(self, index: int, h: torch.Tensor, residual: torch.Tensor | None, k_cache: torch.Tensor,
            v_cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...


class NativeLayerRunner(Protocol):
    """Runs whole decoder layers in one call each (engine/models/native_layers.py): the same bits as the modules."""

    def step(self, ctx: ForwardContext, rows: int, k_cache: torch.Tensor) -> FusedStep | None: ...


@runtime_checkable
class GatedProjection(Protocol):
    """A fused gate/up projection that gives silu(gate) * up in one call (engine/models/cpu_linear.py)."""

    def silu_and_mul(self, x: torch.Tensor) -> torch.Tensor: ...


class MLP(nn.Module):
    gated_projection = "gate_up_proj"  # packed as a GatedProjection where the CPU kernel can (cpu_linear.pack_linears)

    def __init__(self, args: ModelArgs, ops) -> None:
        super().__init__()
        self.ops = ops
        self.gate_up_proj = nn.Linear(args.hidden_size, 2 * args.intermediate_size, bias=args.mlp_bias)
        self.down_proj = nn.Linear(args.intermediate_size, args.hidden_size, bias=args.mlp_bias)

    def forward(self, x: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        # a GatedProjection's method (getattr: a runtime Protocol check costs microseconds a layer); LoRA adds to
        # the product itself, so its steps take the separate op
        fused = getattr(self.gate_up_proj, "silu_and_mul", None) if ctx.lora is None else None
        if fused is not None:
            hidden = fused(x)
        else:
            hidden = self.ops.silu_and_mul(project(self.gate_up_proj, x, ctx))
        return project(self.down_proj, hidden, ctx)


class DecoderLayer(nn.Module):
    def __init__(self, args: ModelArgs, ops) -> None:
        super().__init__()
        self.ops = ops
        self.eps = args.rms_norm_eps
        self.self_attn = Attention(args, ops)
        self.mlp = MLP(args, ops)
        self.input_layernorm = nn.Parameter(torch.ones(args.hidden_size))
        self.post_attention_layernorm = nn.Parameter(torch.ones(args.hidden_size))

    def forward(self, h, residual, ctx: ForwardContext, k_cache, v_cache, rows: LastLayerRows | None = None):
        x, residual = self.ops.fused_add_rms_norm(h, residual, self.input_layernorm, self.eps)
        x = self.self_attn(x, ctx, k_cache, v_cache, rows)
        if rows is not None:
            residual = residual.index_select(0, rows.index)
        x, residual = self.ops.fused_add_rms_norm(x, residual, self.post_attention_layernorm, self.eps)
        return self.mlp(x, ctx), residual


class LlamaForCausalLM(nn.Module):
    """Decoder-only transformer; `forward` returns final hidden states, `compute_logits` the vocab scores."""

    def __init__(self, args: ModelArgs, ops) -> None:
        super().__init__()
        self.args = args
        self.ops = ops
        self.embed_tokens = nn.Embedding(args.vocab_size, args.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(args, ops) for _ in range(args.num_layers))
        self.norm = nn.Parameter(torch.ones(args.hidden_size))
        self.lm_head = nn.Linear(args.hidden_size, args.vocab_size, bias=False)
        if args.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        # set at load where every layer can run as one native call (engine/models/native_layers.py)
        self.native_layers: NativeLayerRunner | None = None

    def forward(self, input_ids: torch.Tensor, ctx: ForwardContext, kv_caches: list[tuple[torch.Tensor, torch.Tensor]]):
        """Final hidden states [T, hidden] of the step's rows, or of `ctx.last_rows` only when set."""
        h, residual = self.embed_tokens(input_ids), None  # h: [T, hidden]
        last = len(self.layers) - 1
        # layers in one native call each, but a last layer that keeps only the sampling rows
        fused = None if self.native_layers is None else self.native_layers.step(ctx, h.shape[0], kv_caches[0][0])
        for i, (layer, (k_cache, v_cache)) in enumerate(zip(self.layers, kv_caches)):
            if fused is not None and (i < last or ctx.last_rows is None):
                h, residual = fused.run(i, h, residual, k_cache, v_cache)
            else:
                h, residual = layer(h, residual, ctx, k_cache, v_cache, ctx.last_rows if i == last else None)
        h, _ = self.ops.fused_add_rms_norm(h, residual, self.norm, self.args.rms_norm_eps)
        return h

    def compute_logits(self, hidden: torch.Tensor, argmax_only: bool = False) -> torch.Tensor:
        """Vocabulary scores of `hidden`. `argmax_only`: the caller reads nothing but each row's argmax, and a head
        that can find it for less (engine.models.cpu_linear.NativeLinear.argmax_logits) returns scores exact only
        where they can be a row's largest."""
        if argmax_only and isinstance(self.lm_head, ArgmaxHead):
            return self.lm_head.argmax_logits(hidden)
        return self.lm_head(hidden)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copy HF-named tensors in, stacking q/k/v and gate/up into the fused projections."""
        params = dict(self.named_parameters())
        loaded: set[str] = set()
        for hf_name, tensor in weights:
            name, shard = _map_hf_name(hf_name, self.args)
            if name is None:
                continue
            if name not in params:
                raise ValueError(f"checkpoint tensor {hf_name!r} has no place in the model")
            target = params[name].data
            if shard is not None:
                start, size = shard
                target = target.narrow(0, start, size)
            if target.shape != tensor.shape:
                raise ValueError(f"checkpoint tensor {hf_name!r} has shape {tuple(tensor.shape)}, "
                                 f"expected {tuple(target.shape)}")
            target.copy_(tensor)
            loaded.add(name if shard is None else f"{name}@{shard[0]}")
        self._check_complete(loaded)

    def _check_complete(self, loaded: set[str]) -> None:
        names = {n.split("@")[0] for n in loaded}
        missing = [n for n, _ in self.named_parameters() if n not in names]
        if missing:
            raise ValueError(f"checkpoint is missing {len(missing)} tensors, e.g. {missing[:3]}")


_STACKED = {"q_proj": ("qkv_proj", 0), "k_proj": ("qkv_proj", 1), "v_proj": ("qkv_proj", 2),
            "gate_proj": ("gate_up_proj", 0), "up_proj": ("gate_up_proj", 1)}
_NORMS = {"input_layernorm", "post_attention_layernorm", "q_norm", "k_norm"}


def _map_hf_name(hf_name: str, args: ModelArgs) -> tuple[str | None, tuple[int, int] | None]:
    """HF checkpoint name -> (our parameter name, (row offset, rows) inside a fused weight or None)."""
    if "rotary_emb" in hf_name:
        return None, None
    name = hf_name.removeprefix("model.")
    if name == "lm_head.weight" and args.tie_word_embeddings:
        return None, None
    parts = name.split(".")
    if parts[-2] in _NORMS or name == "norm.weight":  # RMSNorm weights are bare parameters here
        return ".".join(parts[:-1]), None
    module = parts[-2]
    if module not in _STACKED:
        return name, None
    fused, index = _STACKED[module]
    q, kv, inter = args.num_heads * args.head_dim, args.num_kv_heads * args.head_dim, args.intermediate_size
    offsets = {"qkv_proj": [(0, q), (q, kv), (q + kv, kv)], "gate_up_proj": [(0, inter), (inter, inter)]}
    return ".".join(parts[:-2] + [fused, parts[-1]]), offsets[fused][index]
