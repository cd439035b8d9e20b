"""How the package declares what it needs: ranges for the library (so ``pip install`` keeps a user's
torch), exact pins only in ``constraints.txt``, which the README's set-up and CI install with."""

from __future__ import annotations

from importlib.metadata import version
from pathlib import Path

import tomllib
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]


def _requirements() -> dict[str, Requirement]:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return {Requirement(d).name.lower(): Requirement(d) for d in deps}


def _pins() -> dict[str, Version]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, v = line.partition("==")
            pins[name.strip().lower().replace("_", "-")] = Version(v.strip())
    return pins


def test_torch_is_a_range_and_the_pins_fall_inside_it():
    reqs, pins = _requirements(), _pins()
    for name in ("torch", "torchvision"):
        spec = reqs[name].specifier
        assert not any(s.operator in ("==", "===") for s in spec), f"{name} is pinned in pyproject.toml: {spec}"
        assert any(s.operator == ">=" for s in spec) and any(s.operator == "<" for s in spec), spec
        assert pins[name] in spec, f"constraints.txt pins {name} {pins[name]} outside {spec}"
        assert Version("2.13" if name == "torch" else "0.28") in spec  # the oldest tried (README: Install)
    # no core dependency is pinned exactly; every pin names a package the project installs
    assert not [r for r in reqs.values() if any(s.operator == "==" for s in r.specifier)]
    assert {"torch", "torchvision", "timm", "numpy", "pytest"} <= set(pins)


def test_the_installed_versions_satisfy_the_declared_ranges():
    for name, req in _requirements().items():
        assert Version(version(name)) in req.specifier or not req.specifier, (name, version(name), req)


def test_set_up_commands_install_with_the_constraints():
    readme = (ROOT / "README.md").read_text().split("\n```bash\n", 1)[1].split("\n```", 1)[0].splitlines()
    ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if "pip install" in line]
    assert len(readme) == 2 and len(ci) == 1
    for command in readme + ci:
        assert "pip install -q -c constraints.txt -e " in command, command
