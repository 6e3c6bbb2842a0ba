"""Import the benchmark's peer libraries (learn2learn 0.2.0, higher 0.2.1) without breaking torch.

learn2learn imports torchvision. The torchvision wheel that pairs with a torch release is built
against that release's default (CUDA) build, so beside a CPU-only torch its compiled ops library
does not load; torchvision then still registers Python "fake" kernels for ``torchvision::nms`` and
``torchvision::qnms``, which fails because those operators were never defined, and the import of
torchvision (hence of learn2learn) raises. Defining the two schemas with ``torch.library`` before
the import, only when the compiled library cannot be loaded, lets torchvision import; its compiled
ops (nms, roi_align, ...) stay unavailable, which MAML does not need.

    from safe_import import import_learn2learn
    l2l = import_learn2learn()          # None if learn2learn is not installed
"""

from __future__ import annotations

import glob
import importlib
import importlib.metadata
import importlib.util
import os
from types import ModuleType

import torch

# The schemas torchvision/_meta_registrations.py registers fake kernels for at import time.
TORCHVISION_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_shim: torch.library.Library | None = None  # kept alive: the definitions live as long as this object


def torchvision_ops_load() -> bool | None:
    """Whether torchvision's compiled ops load beside this torch; None if torchvision is absent."""
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return None
    libraries = glob.glob(os.path.join(spec.submodule_search_locations[0], "_C*.so"))
    if not libraries:
        return False
    try:
        torch.ops.load_library(libraries[0])
    except (OSError, RuntimeError):
        return False
    return True


def install_torchvision_shim() -> bool:
    """Define ``torchvision::nms``/``qnms`` when torchvision's compiled ops cannot load; True if it did."""
    global _shim
    if _shim is not None or torchvision_ops_load() is not False:
        return False
    _shim = torch.library.Library("torchvision", "DEF")  # noqa: TOR901 - a namespace of our own here
    for schema in TORCHVISION_SCHEMAS.values():
        _shim.define(schema)
    return True


def import_learn2learn() -> ModuleType | None:
    """``learn2learn``, imported with the torchvision shim if it needs one; None if not installed."""
    if importlib.util.find_spec("learn2learn") is None:
        return None
    install_torchvision_shim()
    return importlib.import_module("learn2learn")


def peer_versions() -> dict[str, str]:
    """Installed version of each peer (importing it), or why it is unavailable."""
    versions = {}
    for name, importer in (("higher", lambda: importlib.import_module("higher")), ("learn2learn", import_learn2learn)):
        try:
            module = importer()
        except Exception as error:  # noqa: BLE001 - report any import failure and go on
            versions[name] = f"import failed: {type(error).__name__}: {error}"
            continue
        versions[name] = importlib.metadata.version(name) if module is not None else "not installed"
    return versions
