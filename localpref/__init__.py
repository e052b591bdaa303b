"""localpref: train language models from steers (local corrections of a generation).

Modules:
    localpref.data      steer schema, loading, tokenization, divergence spans, importers
    localpref.logprobs  per-token log-probs from logits or hidden states (Triton or PyTorch)
    localpref.losses    localized preference losses, SFT and DPO baselines (pure functions)
    localpref.kernels   Triton kernels (source folder: kernels/), each beside its reference
    localpref.train     the Hydra training entry point
"""

import sys
from importlib.machinery import ModuleSpec
from importlib.util import module_from_spec
from pathlib import Path

__version__ = "0.1.0"


def _mount_source_kernels() -> None:
    """In a checkout, make the folder ``kernels/`` the namespace package ``localpref.kernels``.

    A wheel installs that folder as ``localpref/kernels/`` and needs nothing from here. In a
    checkout (the editable install, or a Python started at the repository root) it sits beside
    ``localpref/`` and has no ``__init__.py``, so that it shadows no PyPI ``kernels``
    (kernels/README.md); setuptools' editable finder maps no such folder (pypa/setuptools#4943),
    so we do: the same namespace package the wheel gives.
    """
    root = Path(__file__).resolve().parent.parent
    if not ((root / "pyproject.toml").is_file() and (root / "kernels").is_dir()):
        return  # installed from a wheel
    spec = ModuleSpec(f"{__name__}.kernels", None, is_package=True)
    spec.submodule_search_locations = [str(root / "kernels")]
    sys.modules[spec.name] = module = module_from_spec(spec)
    setattr(sys.modules[__name__], "kernels", module)  # what importing a subpackage sets on its parent


_mount_source_kernels()
