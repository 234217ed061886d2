"""Tide installs under one import name, `tide`: every package folder is in the distribution, nothing imports the
folders by their bare names, and the installed code never mixes with another distribution's top-level package
(Hugging Face's `kernels`, which transformers imports, was shadowed by ours before)."""
from __future__ import annotations

import ast
import importlib
import importlib.metadata
import sys
import tomllib
from pathlib import Path

import kernels as hf_kernels  # the test process resolves `kernels` as any user's would: Hugging Face's
import tide.kernels
from tests.helpers.paths import REPO

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
FOLDERS = PYPROJECT["tool"]["setuptools"]["package-dir"]  # import name -> folder in the checkout
BARE_NAMES = {name.split(".")[1] for name in FOLDERS if "." in name}


def package_folders() -> dict[str, str]:
    """Every folder holding an __init__.py under a mapped root, by the import name it installs as."""
    found = {}
    for name, folder in FOLDERS.items():
        for init in sorted((REPO / folder).rglob("__init__.py")):
            relative = init.parent.relative_to(REPO / folder).parts
            found[".".join((name, *relative))] = str(init.parent.relative_to(REPO))
    return found


def test_every_package_folder_is_installed_and_nothing_else():
    assert sorted(PYPROJECT["tool"]["setuptools"]["packages"]) == sorted(package_folders())


def test_installed_distribution_claims_only_the_tide_import_name():
    dist = importlib.metadata.distribution("tide")
    top_level = (dist.read_text("top_level.txt") or "").split()
    assert top_level == ["tide"]
    assert {name.split(".")[0] for name in PYPROJECT["tool"]["setuptools"]["packages"]} == {"tide"}


def test_hugging_face_kernels_and_ours_live_side_by_side():
    assert hasattr(hf_kernels, "get_kernel") and not hasattr(hf_kernels, "get_ops")
    assert Path(hf_kernels.__file__).parent != REPO / "kernels"
    assert callable(tide.kernels.get_ops)
    hub_kernels = importlib.import_module("transformers.integrations.hub_kernels")  # imports `kernels` by name
    assert hub_kernels is not None and sys.modules["kernels"] is hf_kernels


def test_no_module_imports_a_folder_by_its_bare_name():
    offenders = []
    for folder in ["tide", "tests", *FOLDERS.values()]:
        for path in sorted((REPO / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and not node.level:
                    names = [node.module or ""]
                else:
                    continue
                # A bare `kernels` in a test is Hugging Face's (as above); anywhere else it would mean ours.
                offenders += [f"{path.relative_to(REPO)}:{node.lineno} {n}" for n in names
                              if n.split(".")[0] in BARE_NAMES and not (folder == "tests" and n == "kernels")]
    assert offenders == []
