"""The folder kernels/ shadows no PyPI ``kernels``, and ``localpref.kernels`` imports wherever we run.

transformers (>= 5.25) imports the PyPI package ``kernels``, and a Python started at the repository
root (``python -c``, ``python -m``, a notebook) has the root first on ``sys.path``, where the folder
``kernels/`` sits. It has no ``__init__.py``, so it is at most a namespace portion that a regular
package later on the path wins over (kernels/README.md). Each check runs in a fresh interpreter,
since this one imported transformers and localpref long ago; none sets ``PYTHONSAFEPATH``.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
KERNEL_MODULES = sorted(p.stem for p in (REPO / "kernels").glob("*.py") if p.stem != "__init__")


def library_paths() -> list[Path]:
    """Where this interpreter finds third-party packages: its ``sys.path`` less the standard library
    (a child has that anyway) and the repository root (what the checks put there themselves): the
    site directories and whatever their ``.pth`` files add, which ``python -S`` would lose."""
    stdlib = {Path(sysconfig.get_path(key)).resolve() for key in ("stdlib", "platstdlib")}
    paths = []
    for entry in sys.path:
        path = Path(entry or ".").resolve()
        if (path.is_dir() and path not in paths and path != REPO and not path.is_relative_to(REPO / "tests")
                and path not in stdlib and path.name != "lib-dynload"):
            paths.append(path)
    return paths


# Run in the child: what a session at the repository root does first (build a transformers model,
# import TRL), then import every kernel module; print where each name came from.
AT_ROOT = r"""
import importlib, importlib.util, json, sys
from transformers import AutoModelForCausalLM, LlamaConfig
from transformers.utils import is_kernels_available
config = LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                     num_key_value_heads=2, vocab_size=64)
AutoModelForCausalLM.from_config(config)
from trl import DPOTrainer  # noqa: F401
spec = importlib.util.find_spec("kernels")
files = {name: importlib.import_module(name).__file__ for name in sys.argv[1:]}
print("RESULT " + json.dumps({
    "path0": sys.path[0], "files": files, "kernels_available": is_kernels_available(),
    "kernels_origin": spec and spec.origin,
    "kernels_locations": spec and spec.submodule_search_locations and list(spec.submodule_search_locations),
    "localpref_kernels_path": list(importlib.import_module("localpref.kernels").__path__)}))
"""

IMPORT_KERNELS = r"""
import importlib, json, sys
import localpref
print("RESULT " + json.dumps({"localpref": localpref.__file__,
                              "files": {name: importlib.import_module(name).__file__ for name in sys.argv[1:]},
                              "meta_path": [repr(finder) for finder in sys.meta_path]}))
"""


def kernel_names() -> list[str]:
    return [f"localpref.kernels.{name}" for name in KERNEL_MODULES]


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without what would hide the problem: no PYTHONSAFEPATH, no PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONSAFEPATH", "PYTHONPATH")}
    return {**env, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", **extra}


def run_python(args: list[str], cwd: Path, env: dict[str, str]) -> dict:
    proc = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, f"child python failed (rc {proc.returncode}):\n{proc.stderr[-4000:]}"
    return json.loads(lines[-1][len("RESULT "):])


def pip(*args: str) -> None:
    """``python -m pip ARGS``, offline."""
    env = clean_env(PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    proc = subprocess.run([sys.executable, "-m", "pip", "-q", *args], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, f"pip {' '.join(args)} failed:\n{proc.stderr[-4000:]}"


def inside(path: str | None, folder: Path) -> bool:
    return path is not None and Path(path).resolve().is_relative_to(folder.resolve())


def test_kernels_folder_is_no_regular_package():
    assert KERNEL_MODULES, "no kernel modules found in kernels/"
    assert not (REPO / "kernels" / "__init__.py").exists(), (
        "kernels/__init__.py makes the folder a regular package that shadows the PyPI `kernels` for any "
        "Python started at the repository root (kernels/README.md)")


def test_session_at_repository_root_imports_transformers_and_the_kernels():
    """This environment as it is (the editable install, the PyPI ``kernels`` if transformers pulled it in)."""
    got = run_python(["-c", AT_ROOT, "localpref.kernels", *kernel_names()], REPO, clean_env())
    assert got["path0"] in ("", str(REPO)), f"the repository root is not first on sys.path: {got['path0']!r}"
    for name, file in got["files"].items():
        if name != "localpref.kernels":
            assert inside(file, REPO / "kernels"), (name, file)
    assert [str(REPO / "kernels")] == got["localpref_kernels_path"]
    if got["kernels_origin"] is not None:  # the PyPI package: a regular package, not our folder
        assert not inside(got["kernels_origin"], REPO / "kernels"), got["kernels_origin"]
    else:  # not installed: the folder is found as a namespace portion, and transformers must not take it
        assert got["kernels_locations"] == [str(REPO / "kernels")] and not got["kernels_available"], got


@pytest.mark.slow  # 14-25 s on 2 busy cores: a second interpreter building a model and importing TRL
def test_session_at_repository_root_without_pypi_kernels(tmp_path):
    """The same where no PyPI ``kernels`` is installed: the repository's folder is then the only
    ``kernels`` on the path, and transformers must see it as absent. Emulated with ``-S`` (no site
    directories, so no editable finder either: ``localpref`` comes from the root, as in a fresh
    checkout) and a copy of the site directories, as links, without ``kernels``."""
    packages = tmp_path / "site-packages"
    packages.mkdir()
    for folder in library_paths():
        for entry in folder.iterdir():
            name = entry.name
            if name == "kernels" or name.startswith(("kernels-", "__editable__")) or (packages / name).exists():
                continue
            (packages / name).symlink_to(entry)
    got = run_python(["-S", "-c", AT_ROOT, "localpref.kernels", *kernel_names()], REPO,
                     clean_env(PYTHONPATH=str(packages)))
    assert got["path0"] in ("", str(REPO)), f"the repository root is not first on sys.path: {got['path0']!r}"
    assert got["kernels_origin"] is None and got["kernels_locations"] == [str(REPO / "kernels")], got
    assert not got["kernels_available"]
    for name, file in got["files"].items():
        if name != "localpref.kernels":
            assert inside(file, REPO / "kernels"), (name, file)


def test_kernels_import_away_from_the_repository(tmp_path):
    """Started elsewhere, ``localpref`` comes from the install (here: the editable one, if any)."""
    try:
        importlib.metadata.version("localpref")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("localpref is not installed in this environment (pip install -e .)")
    got = run_python(["-c", IMPORT_KERNELS, "localpref.kernels", *kernel_names()], tmp_path, clean_env())
    root = Path(got["localpref"]).resolve().parents[1]
    for name in kernel_names():
        assert Path(got["files"][name]).resolve().parent.name == "kernels", (name, got)
        assert inside(got["files"][name], root), (name, got)


def test_built_wheel_installs_the_kernels_as_localpref_kernels(tmp_path):
    """``pip wheel`` (offline, no build isolation) and ``pip install --target``, then an import with
    ``-S`` (no site directories, so no editable finder) from a folder outside the repository."""
    if importlib.util.find_spec("pip") is None:
        pytest.skip("pip is not installed in this environment: cannot build the wheel")
    if importlib.util.find_spec("setuptools") is None:
        pytest.skip("setuptools is not installed: --no-build-isolation cannot build the wheel")
    # Build from a copy of what the wheel is made of: building in the checkout would leave build/ and
    # *.egg-info there, and a stale build/lib would go into later wheels.
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    for name in ("localpref", "kernels"):
        shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    wheels, target = tmp_path / "wheels", tmp_path / "target"
    pip("wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(source))
    (wheel,) = wheels.glob("localpref-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"localpref/kernels/{name}.py" for name in KERNEL_MODULES} <= names, sorted(names)
    assert not any(name.startswith("kernels/") for name in names), "the wheel ships a top-level kernels"
    pip("install", "--no-deps", "--target", str(target), str(wheel))

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    path = os.pathsep.join(map(str, [target, *library_paths()]))  # torch and triton from this environment
    got = run_python(["-S", "-c", IMPORT_KERNELS, "localpref.kernels", *kernel_names()], elsewhere,
                     clean_env(PYTHONPATH=path))
    assert inside(got["localpref"], target), got
    for name in kernel_names():
        assert inside(got["files"][name], target / "localpref" / "kernels"), (name, got)
    assert not any("Editable" in finder for finder in got["meta_path"]), got["meta_path"]
