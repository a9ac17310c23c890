"""Which `_target_`s a config read from a file may name, checked before Hydra instantiates anything.

A checkpoint's `hyper_parameters` and a run dir's `.hydra/config.yaml` are files anyone can hand
over; Hydra's `instantiate` imports and calls whatever `_target_` names (`os.system`,
`builtins.open`, `torch.load(weights_only=False)`, ...), at any depth, so a weights-only checkpoint
would still run code. Hydra's own blocklist does not stop these, hence an ALLOWLIST: this project's
network, loss, module and data builders, and the network, optimizer and augmentation libraries, but
nothing that reads or writes files (file-reading augmentations, checkpoint/pretrained-file kwargs).

A target is resolved the way Hydra's `_locate` does (getattr, else import), so an allowed prefix
cannot reach `os` through a module attribute (`torch.nn.modules.module.torch.load`) or a class
attribute (`Unet.from_pretrained`): the object called must itself live under the allowlist.
Pure: imports neither Lightning nor Hydra (only the allowlisted packages, when a target names them).
"""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Mapping, Sequence
from types import ModuleType
from typing import Any

TARGET = "_target_"

# an entry ending in "." allows everything below it (subject to the per-library rules); any other
# entry is one exact name
ALLOWED_TARGETS: tuple[str, ...] = (
    "lightning_modules.networks.",
    "lightning_modules.losses.",
    "lightning_modules.schedules.",
    "lightning_modules.segmentation.",
    "lightning_modules.classification.",
    "datamodules.segmentation.",
    "datamodules.classification.",
    "wbc.data.transforms.",
    "wbc.data.synthetic.SyntheticSpec",
    "segmentation_models_pytorch.",
    "timm.",
    "torch.nn.",
    "torch.optim.",
    "albumentations.",
)
# libraries whose targets must be networks (torch.nn.Module classes) or their `create_model` factory
# (timm and smp also hold checkpoint loaders, hub download/upload and dataset readers)
NETWORK_LIBRARIES = ("segmentation_models_pytorch.", "timm.", "torch.nn.")
FACTORIES = ("segmentation_models_pytorch.create_model", "timm.models._factory.create_model")
# albumentations transforms that read files named in their arguments (reference images, fonts,
# templates) or call arbitrary callables; matched anywhere in a class's MRO
FILE_READING_TRANSFORMS = frozenset(
    {"BaseDomainAdaptation", "FDA", "HistogramMatching", "PixelDistributionAdaptation", "TemplateTransform", "TextImage", "Lambda"}
)
# arguments that name a file to load or a callable to run (timm's checkpoint_path /
# pretrained_cfg_overlay.file, albumentations' read_fn, ...), refused at any depth
DENIED_KEYS = frozenset({"read_fn", "font_path", "checkpoint_path", "pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"})
DENIED_KEY_SUFFIXES = ("_fn", "_func", "_function")
# a model name that makes timm fetch a config / weights from a hub repo or read a folder (`hf-hub:<repo>`,
# `local-dir:<path>`) when the network is built: a received checkpoint could name an attacker's repo
DENIED_VALUE_PREFIXES = ("hf-hub:", "hf_hub:", "local-dir:")
MAX_DEPTH = 64
_DOTTED = re.compile(r"[A-Za-z][A-Za-z0-9_]*(\.[A-Za-z][A-Za-z0-9_]*)+")


class UnsafeConfigError(ValueError):
    """A config read from a file names a `_target_` (or argument) outside the allowlist."""


def _allowed(name: str) -> bool:
    return any(name.startswith(p) if p.endswith(".") else name == p for p in ALLOWED_TARGETS)


def _allowed_module(name: str) -> bool:
    """A module on the way to an allowed target: a parent of an entry, or below one."""
    return any(p.startswith(name + ".") or (name + ".").startswith(p) for p in ALLOWED_TARGETS)


def _mro_names(cls: type) -> set[str]:
    return {c.__qualname__ for c in cls.__mro__}


def _is_torch_module(cls: type) -> bool:
    return any(c.__module__ == "torch.nn.modules.module" and c.__qualname__ == "Module" for c in cls.__mro__)


def _resolve(target: str) -> Any:
    """The object Hydra's `_locate` would return, refusing any step that is not an allowed module."""
    parts = target.split(".")
    obj: Any = importlib.import_module(parts[0])
    for i, part in enumerate(parts[1:], start=1):
        if not isinstance(obj, ModuleType):
            raise UnsafeConfigError(f"reaches through {'.'.join(parts[:i])!r}, which is not a module (methods and class attributes are not allowed)")
        if not _allowed_module(obj.__name__):
            raise UnsafeConfigError(f"reaches through module {obj.__name__!r}, outside the allowlist")
        try:
            obj = getattr(obj, part)
        except AttributeError:
            obj = importlib.import_module(".".join(parts[: i + 1]))
    return obj


def _problem(target: Any) -> str | None:
    """Why `target` may not be instantiated (None: it may)."""
    if not isinstance(target, str):
        return f"a _target_ must be a dotted name (a string), got {type(target).__name__}"
    if not _DOTTED.fullmatch(target):
        return "not a plain dotted name (no private or dunder parts, no interpolation)"
    if not _allowed(target):
        return "not under an allowed prefix"
    try:
        obj = _resolve(target)
    except UnsafeConfigError as err:
        return str(err)
    except Exception as err:  # noqa: BLE001 - an import error inside an allowed package: say which
        return f"cannot be imported ({type(err).__name__}: {err})"
    if not (inspect.isclass(obj) or inspect.isfunction(obj)):
        return f"resolves to a {type(obj).__name__}, not a class or function"
    canonical = f"{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', '')}"
    if not _allowed(canonical):
        return f"resolves to {canonical}, outside the allowlist"
    if canonical.startswith(NETWORK_LIBRARIES) and canonical not in FACTORIES and not (inspect.isclass(obj) and _is_torch_module(obj)):
        return "from timm / segmentation_models_pytorch / torch.nn only torch.nn.Module classes and create_model are allowed"
    if canonical.startswith("torch.optim.") and not inspect.isclass(obj):
        return "from torch.optim only optimizer and scheduler classes are allowed"
    if canonical.startswith("albumentations."):
        if not inspect.isclass(obj) or not _mro_names(obj) & {"BasicTransform", "BaseCompose"}:
            return "from albumentations only transform classes are allowed"
        if _mro_names(obj) & FILE_READING_TRANSFORMS:
            return "reads files or calls callables given in its arguments"
    return None


def _denied_key(key: Any) -> bool:
    return isinstance(key, str) and (key in DENIED_KEYS or key.endswith(DENIED_KEY_SUFFIXES))


def _plain(node: Any) -> Any:
    """An OmegaConf container as plain dicts/lists, resolved as Hydra would see it."""
    if type(node).__module__.startswith("omegaconf"):
        from omegaconf import OmegaConf

        try:
            return OmegaConf.to_container(node, resolve=True)
        except Exception:  # noqa: BLE001 - unresolvable: check the raw text (an interpolated _target_ is refused)
            return OmegaConf.to_container(node, resolve=False)
    return node


def allowed_text() -> str:
    return ", ".join(ALLOWED_TARGETS)


def check_targets(node: Any, where: str, key: str = "", _depth: int = 0) -> None:
    """Refuse (UnsafeConfigError, a ValueError naming `where` and the dotted key) any `_target_` at any
    depth of `node` (dicts, lists, DictConfig, ListConfig) outside the allowlist, and any argument
    that names a file to load or a callable to run, and any interpolation left in a string (configs are
    checked as Hydra will see them: checkpoints hold resolved values). `where`: the file, e.g.
    `ckpt_path=/x/a.ckpt`."""
    if _depth > MAX_DEPTH:
        raise UnsafeConfigError(f"{where}: {key} is nested more than {MAX_DEPTH} levels deep (self-referencing?)")
    node = _plain(node)
    if isinstance(node, Mapping):
        for k, value in node.items():
            path = f"{key}.{k}" if key else str(k)
            if k == TARGET:
                reason = _problem(value)
                if reason is not None:
                    raise UnsafeConfigError(f"{where}: {path}={value!r} is not allowed ({reason}); allowed: {allowed_text()}")
            elif _denied_key(k):
                raise UnsafeConfigError(f"{where}: {path} is not allowed (an argument naming a file to load or a callable to run)")
            else:
                check_targets(value, where, path, _depth + 1)
    elif isinstance(node, Sequence) and not isinstance(node, str | bytes):
        for i, value in enumerate(node):
            check_targets(value, where, f"{key}[{i}]", _depth + 1)
    elif isinstance(node, str) and node.strip().lower().startswith(DENIED_VALUE_PREFIXES):
        raise UnsafeConfigError(f"{where}: {key}={node!r} is not allowed (a model name that fetches from a hub repo or reads a "
                                "folder when the network is built); a trained model's weights are in its checkpoint")
    elif isinstance(node, str) and "${" in node:
        raise UnsafeConfigError(
            f"{where}: {key}={node!r} is not allowed (an interpolation: Hydra resolves it only when it instantiates, "
            "and `${oc.create:...}` / `${oc.decode:...}` would build a `_target_` this check never saw)"
        )
