"""The environment files agree: pyproject.toml, environment.yml, requirements.lock."""

import re
import tomllib
from pathlib import Path

import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# conda-forge names that differ from the PyPI names
CONDA_TO_PYPI = {"pytorch-cpu": "torch", "prometheus_client": "prometheus-client"}
CONDA_ONLY = {"python", "pip", "setuptools"}


def _runtime() -> dict[str, Requirement]:
    reqs = (Requirement(r) for r in PYPROJECT["project"]["dependencies"])
    return {canonicalize_name(r.name): r for r in reqs}


def _conda() -> dict[str, SpecifierSet]:
    """environment.yml's dependencies as {PyPI name: version range}, pip section included."""
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    found = {}
    for dep in env["dependencies"]:
        for spec in dep["pip"] if isinstance(dep, dict) else [dep]:
            name, version = re.match(r"([A-Za-z0-9_.\-]+)(.*)", spec.strip()).groups()
            if name not in CONDA_ONLY:
                found[canonicalize_name(CONDA_TO_PYPI.get(name, name))] = SpecifierSet(version)
    return found


def _lock() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pins[canonicalize_name(name)] = version
    return pins


def test_environment_yml_declares_the_same_runtime_dependencies():
    assert set(_conda()) == set(_runtime())


def test_environment_yml_uses_the_same_version_ranges():
    conda = _conda()
    for name, req in _runtime().items():
        assert conda[name] == req.specifier, name


def test_environment_yml_is_conda_forge_python_311_cpu_torch():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert env["channels"][0] == "conda-forge"
    assert "python=3.11" in env["dependencies"]
    assert any(str(d).startswith("pytorch-cpu") for d in env["dependencies"])


def test_lock_pins_every_dependency_inside_its_range():
    pins = _lock()
    dev = [Requirement(r) for r in PYPROJECT["project"]["optional-dependencies"]["dev"]]
    for req in [*_runtime().values(), *dev]:
        name = canonicalize_name(req.name)
        assert name in pins, f"{name} is not in requirements.lock (run `make lock`)"
        assert req.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]} not in {req.specifier}"


def test_lock_pins_cpu_torch_2_13_0():
    assert _lock()["torch"] == "2.13.0"


def test_postbuild_fails_fast_and_prepares_the_model():
    text = (ROOT / "postBuild").read_text()
    assert "set -e" in text
    assert "pip install" in text and "-e ." in text
    assert "python -m labsupport.embeddings" in text


def test_ci_runs_make_test():
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_make_installs_torch_from_the_cpu_index_before_the_lock():
    """On an ordinary Linux machine PyPI's torch is the CUDA build (several GB): `make`
    takes the lock's torch pin from PyTorch's CPU-only index first, with no dependencies,
    and fails over at once where that index cannot be reached."""
    import subprocess

    plan = subprocess.run(["make", "-n", "-B", ".venv/.deps-installed"], cwd=ROOT,
                          capture_output=True, text=True, check=True).stdout
    lines = [line for line in plan.replace("\\\n", " ").splitlines() if "pip install" in line]
    torch_line, lock_line = lines[0], lines[1]
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in torch_line
    assert "--no-deps" in torch_line and "--retries 0" in torch_line
    assert f"'torch=={_lock()['torch']}'" in torch_line
    assert "-r requirements.lock" in lock_line
