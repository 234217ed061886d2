"""Builds and loads the native CPU library (kernels/csrc: paged attention, element-wise ops, LoRA updates, argmax,
the linears) on first use, cached on disk.

The library is a plain C ABI called through ctypes: no torch headers, so one compile takes about a second. The
compiler flags follow the CPU's features, read at run time (AVX-512 with or without BF16, else AVX2 + FMA), and the
build is cached under Tide's cache directory by a hash of the source, the flags and the compiler. A build writes a
temporary file and renames it into place, so there is no lock that a killed build could leave behind. Anything
that goes wrong (no compiler, an unsupported CPU, a failed build) leaves `load()` returning None with the reason in
`status()`, and the engine uses the PyTorch twins instead.
"""
from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger("tide.kernels")

CSRC = Path(__file__).parent / "csrc"
SOURCES = (CSRC / "paged_attention.cpp", CSRC / "lora.cpp", CSRC / "argmax.cpp", CSRC / "linear.cpp",
           CSRC / "decoder_layer.cpp")  # one vector.h
DISABLE_ENV = "TIDE_NATIVE"  # TIDE_NATIVE=0 turns the native library off
ISA_ENV = "TIDE_NATIVE_ISA"  # avx512 (no BF16) | avx2: build for less than the CPU has (tests, comparisons)
BUILD_TIMEOUT_S = 120


@dataclass(frozen=True)
class NativeLibrary:
    """The loaded library and what it was built for."""

    lib: ctypes.CDLL
    isa: str  # e.g. "avx512+bf16", "avx2+fma"
    vector_width: int  # floats per vector op
    bf16_dot_products: bool  # bf16 attention and linears on vdpbf16ps (AVX512_BF16), not widened to fp32 FMAs
    path: Path


_lock = threading.Lock()
_loaded: dict[tuple, NativeLibrary | None] = {}
_reasons: dict[tuple, str] = {}


def cache_dir() -> Path:
    """$TIDE_CACHE_DIR/kernels if set, else ~/.cache/tide/kernels."""
    env = os.environ.get("TIDE_CACHE_DIR")
    return (Path(env).expanduser() if env else Path.home() / ".cache" / "tide") / "kernels"


def cpu_flags() -> set[str]:
    """The CPU's feature flags as the kernel reports them (Linux /proc/cpuinfo); empty elsewhere."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def isa_flags(flags: set[str], limit: str | None = None) -> tuple[str, list[str]] | None:
    """(name, compiler flags) for the best ISA this CPU supports, or None when it has neither AVX-512 nor AVX2+FMA.

    `limit` caps it: "avx512" leaves out AVX512_BF16 (so bf16 attention runs on fp32 FMAs), "avx2" AVX-512 too.
    """
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return None
    avx2 = ["-mavx2", "-mfma", "-mf16c"]
    if limit != "avx2" and {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= flags:
        extra = ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq"]
        if "avx512_bf16" in flags and limit != "avx512":
            return "avx512+bf16", avx2 + extra + ["-mavx512bf16"]
        return "avx512", avx2 + extra
    if {"avx2", "fma"} <= flags:
        return "avx2+fma", avx2
    return None


def load(vector_width: int | None = None, isa: str | None = None) -> NativeLibrary | None:
    """The native library for this CPU, built on first use; None when it cannot be had (see `status()`).

    `vector_width` forces the width of the vector code (tests run the 16-wide code on an AVX2 machine this way);
    `isa` ("avx512" or "avx2", else $TIDE_NATIVE_ISA) builds for less than the CPU has, to compare the paths.
    """
    key = (vector_width, isa or os.environ.get(ISA_ENV, ""), os.environ.get(DISABLE_ENV, ""))
    loaded = _loaded.get(key, _loaded)  # every op asks, a few hundred times a step: no lock once it is known
    if loaded is not _loaded:
        return loaded
    with _lock:
        if key not in _loaded:
            try:
                _loaded[key] = _build_and_load(vector_width, key[1].strip().lower() or None)
                _reasons[key] = ""
            except _Unavailable as exc:
                _loaded[key], _reasons[key] = None, str(exc)
            except Exception as exc:  # a failed build must never fail a job: the twins take over
                _loaded[key], _reasons[key] = None, f"{type(exc).__name__}: {exc}"
        return _loaded[key]


def status(vector_width: int | None = None) -> str:
    """One line: the native library in use, or why not."""
    native = load(vector_width)
    if native is None:
        key = (vector_width, os.environ.get(ISA_ENV, ""), os.environ.get(DISABLE_ENV, ""))
        return f"torch twin (native library unavailable: {_reasons[key]})"
    dot = ", bf16 attention on vdpbf16ps" if native.bf16_dot_products else ""
    return f"native C++ ({native.isa}, {native.vector_width} floats per vector op{dot})"


class _Unavailable(Exception):
    pass


def _build_and_load(vector_width: int | None, limit: str | None) -> NativeLibrary:
    if os.environ.get(DISABLE_ENV, "").strip() in ("0", "false", "off", "no"):
        raise _Unavailable(f"{DISABLE_ENV}={os.environ[DISABLE_ENV]}")
    isa = isa_flags(cpu_flags(), limit)
    if isa is None:
        raise _Unavailable(f"no AVX-512 or AVX2+FMA on this CPU ({platform.machine()})")
    compiler = shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++") or shutil.which("clang++")
    if compiler is None:
        raise _Unavailable("no C++ compiler found (set CXX)")
    name, flags = isa
    flags = ["-O3", "-std=c++17", "-shared", "-fPIC", "-fopenmp", "-fno-math-errno", *flags]
    if vector_width is not None:
        flags.append(f"-DTIDE_VECTOR_WIDTH={vector_width}")
    path = _cached_build(compiler, flags)
    lib = ctypes.CDLL(str(path))
    _declare(lib)
    return NativeLibrary(lib=lib, isa=name, vector_width=lib.tide_vector_width(),
                         bf16_dot_products=bool(lib.tide_bf16_dot_products()), path=path)


def _cached_build(compiler: str, flags: list[str]) -> Path:
    source = b"".join(path.read_bytes() for path in (*SOURCES, CSRC / "vector.h"))
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30).stdout
    digest = hashlib.sha256(source + " ".join([compiler, version, *flags]).encode()).hexdigest()[:16]
    target = cache_dir() / f"tide_kernels_{digest}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=target.stem + ".", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        proc = subprocess.run([compiler, *flags, *map(str, SOURCES), "-o", tmp], capture_output=True, text=True,
                              timeout=BUILD_TIMEOUT_S)
        if proc.returncode != 0:
            raise _Unavailable(f"build failed: {' '.join([compiler, *flags])}: {proc.stderr.strip()[-500:]}")
        os.replace(tmp, target)  # atomic: a concurrent or killed build never leaves a half-written library
        logger.info("built the native kernels in %s", target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def _declare(lib: ctypes.CDLL) -> None:
    p, i64, i32, f32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_float
    lib.tide_vector_width.restype = i32
    lib.tide_vector_width.argtypes = []
    lib.tide_bf16_dot_products.restype = i32
    lib.tide_bf16_dot_products.argtypes = []
    lib.tide_paged_attention.restype = i32
    lib.tide_paged_attention.argtypes = [p, i64, p, p, p, p, p, p, i64, i32, i32, i32, i32, i32, f32, i32, i32]
    lib.tide_add_rms_norm.restype = None
    lib.tide_add_rms_norm.argtypes = [p, p, p, p, p, i64, i32, f32, i32, i32]
    lib.tide_silu_and_mul.restype = None
    lib.tide_silu_and_mul.argtypes = [p, p, i64, i32, i32, i32]
    lib.tide_rotary_neox.restype = None
    lib.tide_rotary_neox.argtypes = [p, p, i64, i64, i32, i32, p, i32, i32]
    lib.tide_lora_apply.restype = i32
    lib.tide_lora_apply.argtypes = [p, i64, p, i64, p, p, p, p, i32, i32, i32, i32, p, i32, i32]
    lib.tide_rotary_write_kv.restype = i32
    lib.tide_rotary_write_kv.argtypes = [p, p, i64, i32, p, i64, p, i64, i32, i32, p, p, p, p, i64, i64, i32, i32]
    lib.tide_argmax_rows.restype = None
    lib.tide_argmax_rows.argtypes = [p, i64, i64, i64, i32, p, i32]
    lib.tide_linear_panel_width.restype = i32
    lib.tide_linear_panel_width.argtypes = []
    lib.tide_pack_linear_weight.restype = i32
    lib.tide_pack_linear_weight.argtypes = [p, i64, i64, p, i32, i32, i32]
    lib.tide_linear.restype = i32
    lib.tide_linear.argtypes = [p, i64, i64, i64, p, p, i64, p, i64, i32, i32, i32, i32]
    lib.tide_decoder_layer.restype = i32
    lib.tide_decoder_layer.argtypes = [p, p, p, p, p, p, p]
    lib.tide_linear_refine_max.restype = i64
    lib.tide_linear_refine_max.argtypes = [p, i64, i64, i64, p, i64, p, f32, f32, p, i64, i32]
    lib.tide_write_kv_cache.restype = i32
    lib.tide_write_kv_cache.argtypes = [p, i64, p, i64, p, p, p, i64, i64, i64, i32]
