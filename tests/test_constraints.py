"""constraints.txt, the lock of the versions the suite passed with, stays usable: one pin per package, and every
requirement of pyproject.toml (its extras' too) pinned inside its range, so `pip install -c constraints.txt -e
".[dev]"` neither fails to resolve nor installs an unpinned dependency."""

from __future__ import annotations

import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]


def pins(text: str) -> dict[str, Version]:
    """name -> version of each `name==version` line; anything else is refused, naming the line."""
    found: dict[str, Version] = {}
    for n, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        req = Requirement(line)
        spec = list(req.specifier)
        assert len(spec) == 1 and spec[0].operator == "==", f"constraints.txt:{n}: {line!r} is not name==version"
        name = canonicalize_name(req.name)
        assert name not in found, f"constraints.txt:{n}: {req.name} pinned twice"
        found[name] = Version(spec[0].version)
    return found


def requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = [r for group in project["optional-dependencies"].values() for r in group]
    return [Requirement(r) for r in project["dependencies"] + extras]


def test_every_requirement_is_pinned_inside_its_range() -> None:
    locked = pins((ROOT / "constraints.txt").read_text())
    missing = [str(r) for r in requirements() if canonicalize_name(r.name) not in locked]
    outside = [f"{r} (pinned {locked[canonicalize_name(r.name)]})" for r in requirements()
               if canonicalize_name(r.name) in locked and locked[canonicalize_name(r.name)] not in r.specifier]
    assert not missing and not outside, f"not pinned: {missing}; pinned outside pyproject.toml's range: {outside}"


def test_a_bad_lock_is_named() -> None:
    """The checks above can fail: an unpinned requirement, a pin outside the range, a line that is no pin."""
    import pytest

    reqs = [Requirement("torch==2.14.1"), Requirement("numpy>=2,<3")]
    locked = pins("torch==2.14.1\nnumpy==1.26.4  # too old\n")
    assert [str(r) for r in reqs if locked[canonicalize_name(r.name)] not in r.specifier] == ["numpy<3,>=2"]
    with pytest.raises(AssertionError, match="constraints.txt:2: 'numpy>=2' is not name==version"):
        pins("torch==2.14.1\nnumpy>=2\n")
    with pytest.raises(AssertionError, match="Numpy pinned twice"):
        pins("numpy==2.0.0\nNumpy==2.1.0\n")
