"""Packaging facts that can be checked cheaply: the version has one source, the licence is declared
the PEP 639 way and its file exists. Building and installing the wheel is done by
``scripts/check_dist.sh`` (run by CI), not here."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
from packaging.version import Version

import flowpool

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = ROOT / "pyproject.toml"


def _pyproject() -> dict[str, Any]:
    if not PYPROJECT.is_file():
        pytest.skip("no pyproject.toml beside the tests (not run from a source tree or sdist)")
    with PYPROJECT.open("rb") as handle:
        return tomllib.load(handle)


def test_version_is_a_normalised_pep440_version() -> None:
    assert str(Version(flowpool.__version__)) == flowpool.__version__


def test_version_equals_the_installed_metadata() -> None:
    try:
        installed = importlib.metadata.version("flowpool")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("flowpool is not installed, only importable")
    # A difference means the installed metadata is stale (reinstall) or the version has two sources.
    assert installed == flowpool.__version__


def test_the_metadata_reads_the_version_from_the_package() -> None:
    data = _pyproject()
    project = data["project"]
    assert "version" not in project, "the version is written in flowpool/__init__.py only"
    assert "version" in project["dynamic"]
    assert data["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "flowpool.__version__"}


def test_importing_flowpool_does_not_read_the_installed_metadata() -> None:
    code = "import sys, flowpool; assert 'importlib.metadata' not in sys.modules, 'importlib.metadata imported'"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr


def test_the_licence_is_an_spdx_expression_with_its_file() -> None:
    project = _pyproject()["project"]
    assert project["license"] == "MIT"
    assert project["license-files"] == ["LICENSE"]
    # PEP 639: with a licence expression, a "License ::" classifier is an error for the build.
    assert not [c for c in project["classifiers"] if c.startswith("License ::")]


def test_the_build_requires_a_setuptools_that_knows_pep_639() -> None:
    requires = _pyproject()["build-system"]["requires"]
    assert "setuptools>=77" in requires


def test_the_licence_file_is_the_mit_licence_of_the_project() -> None:
    licence = ROOT / "LICENSE"
    if not licence.is_file() and not PYPROJECT.is_file():
        pytest.skip("not run from a source tree or sdist")
    text = licence.read_text(encoding="utf-8")
    assert text.startswith("MIT License\n")
    assert "Copyright (c) 2026 flowpool developers" in text
    assert 'THE SOFTWARE IS PROVIDED "AS IS"' in text
