"""Decoder layers in one native call each (kernels/csrc/decoder_layer.cpp), for the CPU path.

A layer's modules call eight native kernels from Python, each behind a few microseconds of Python (argument checks,
output tensors, the ctypes call); a 64-row fp32 decode step of SmolLM2-135M went from ~67 to ~57 ms with its 28
middle layers fused, on a quiet machine (docs/PERFORMANCE.md). `tide_decoder_layer` calls the same kernels with the
same arguments in the same order, so a layer's output is the same bits; the step's shapes, positions, slots and
attention layout are gathered once per step (`NativeLayers.step`). It serves every layer of a step without adapter
rows, but the last one of a step that keeps only the sampling rows there (a prefill chunk's, engine/models/llama.py's
LastLayerRows), which the modules run.
"""
from __future__ import annotations

import ctypes

import torch

from tide.engine.models.cpu_linear import GatedNativeLinear, NativeLinear
from tide.kernels.native import NativeLibrary
from tide.kernels.native_ops import _DTYPES, _int32, native_serves


class _Weights(ctypes.Structure):
    _fields_ = [(name, ctypes.c_void_p) for name in ("input_norm", "post_norm", "qkv", "o", "gate_up", "down")]


class _Step(ctypes.Structure):
    _fields_ = ([(name, ctypes.c_int64) for name in ("rows", "num_slots", "table_stride")]
                + [(name, ctypes.c_int) for name in ("hidden", "num_q_heads", "num_kv_heads", "head_dim", "inter",
                                                     "num_seqs", "block_size", "dtype", "num_threads")]
                + [(name, ctypes.c_float) for name in ("eps", "scale")]
                + [(name, ctypes.c_void_p) for name in ("positions", "slots", "cos_sin", "query_start_loc", "seq_lens",
                                                        "block_tables", "x", "qkv", "attn", "o", "act")])


class LayerStep:
    """One step's shared arguments and scratch rows; `run` is one layer."""

    def __init__(self, layers: NativeLayers, ctx, rows: int, dtype: torch.dtype, k_cache: torch.Tensor) -> None:
        model = layers.model
        args, attn = model.args, ctx.attn
        self._library, self._weights = layers.library, layers.weights
        q_size, kv_size = args.num_heads * args.head_dim, args.num_kv_heads * args.head_dim
        # held for the step: the library reads them during every layer's call
        self._held = [_int32(attn.query_start_loc), _int32(attn.seq_lens), _int32(attn.block_tables),
                      ctx.positions.contiguous(),
                      ctx.slot_mapping.contiguous(), ctx.cos_sin_cache,
                      *(torch.empty(rows, n, dtype=dtype) for n in (args.hidden_size, q_size + 2 * kv_size, q_size,
                                                                    args.hidden_size, args.intermediate_size))]
        qsl, seq_lens, tables, positions, slots, cos_sin, x, qkv, out, o, act = self._held
        self.args = _Step(rows=rows, num_slots=k_cache.shape[0] * k_cache.shape[1], table_stride=tables.stride(0),
                          hidden=args.hidden_size, num_q_heads=args.num_heads, num_kv_heads=args.num_kv_heads,
                          head_dim=args.head_dim, inter=args.intermediate_size, num_seqs=attn.num_seqs,
                          block_size=k_cache.shape[1], dtype=_DTYPES[dtype], num_threads=torch.get_num_threads(),
                          eps=args.rms_norm_eps, scale=args.head_dim ** -0.5, positions=positions.data_ptr(),
                          slots=slots.data_ptr(), cos_sin=cos_sin.data_ptr(), query_start_loc=qsl.data_ptr(),
                          seq_lens=seq_lens.data_ptr(), block_tables=tables.data_ptr(), x=x.data_ptr(),
                          qkv=qkv.data_ptr(), attn=out.data_ptr(), o=o.data_ptr(), act=act.data_ptr())

    def run(self, index: int, h: torch.Tensor, residual: torch.Tensor | None, k_cache: torch.Tensor,
            v_cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer `index` on h; residual is updated in place. The first layer (residual None) makes h, which the
        step owns (the embedding's output), the residual."""
        out = torch.empty_like(h)
        stage = self._library.lib.tide_decoder_layer(
            ctypes.byref(self._weights[index]), ctypes.byref(self.args), h.data_ptr(),
            None if residual is None else residual.data_ptr(), out.data_ptr(), k_cache.data_ptr(), v_cache.data_ptr())
        residual = h if residual is None else residual
        if stage != 0:
            raise RuntimeError(f"native decoder layer {index} refused its arguments at stage {stage} (a KV slot "
                               "out of range, or shapes the library does not serve)")
        return out, residual


class NativeLayers:
    """The model's layers as native calls, where every layer has the shape the fused call serves (`build`)."""

    def __init__(self, model, library: NativeLibrary) -> None:
        self.model, self.library = model, library
        self.weights = [_Weights(input_norm=layer.input_layernorm.data_ptr(),
                                 post_norm=layer.post_attention_layernorm.data_ptr(),
                                 qkv=layer.self_attn.qkv_proj.weight.data_ptr(),
                                 o=layer.self_attn.o_proj.weight.data_ptr(),
                                 gate_up=layer.mlp.gate_up_proj.weight.data_ptr(),
                                 down=layer.mlp.down_proj.weight.data_ptr()) for layer in model.layers]

    @classmethod
    def build(cls, model, library: NativeLibrary | None) -> NativeLayers | None:
        """NativeLayers for `model`, or None where a layer is not the plain kind (biases, q/k norms, projections off
        the native kernel, a gate/up not packed gated) or the library does not serve its widths."""
        if library is None:
            return None
        args = model.args
        dtype = model.norm.dtype
        probe_q = torch.empty(1, args.num_heads, args.head_dim, dtype=dtype)
        probe_cache = torch.empty(1, 1, args.num_kv_heads, args.head_dim, dtype=dtype)
        width = library.vector_width
        if not (dtype in _DTYPES and native_serves(probe_q, probe_cache, library)
                and args.hidden_size % width == 0 and (args.head_dim // 2) % width == 0
                and args.intermediate_size % width == 0):
            return None
        for layer in model.layers:
            attn, mlp = layer.self_attn, layer.mlp
            plain = (type(attn.qkv_proj) is NativeLinear and type(attn.o_proj) is NativeLinear
                     and isinstance(mlp.gate_up_proj, GatedNativeLinear) and type(mlp.down_proj) is NativeLinear)
            if not plain or attn.q_norm is not None or any(
                    m.bias is not None for m in (attn.qkv_proj, attn.o_proj, mlp.gate_up_proj, mlp.down_proj)):
                return None
        return cls(model, library)

    def step(self, ctx, rows: int, k_cache: torch.Tensor) -> LayerStep | None:
        """The step's shared arguments, or None when its layers take the modules: adapter rows, or tensors the
        modules' ops would hand to the PyTorch twins (the fused call has no twin to fall back on)."""
        dtype = self.model.norm.dtype
        if (ctx.lora is not None or rows == 0 or ctx.cos_sin_cache.dtype != dtype
                or not ctx.cos_sin_cache.is_contiguous() or ctx.positions.dtype != torch.int64
                or ctx.slot_mapping.dtype != torch.int64 or k_cache.dtype != dtype or not k_cache.is_contiguous()):
            return None
        return LayerStep(self, ctx, rows, dtype, k_cache)
