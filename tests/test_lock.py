"""The cluster installs exactly the versions in requirements.lock, and the lock covers the project."""

import importlib.util
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("cluster_lock", ROOT / "cluster/lock.py")
lock = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(lock)


def test_every_cluster_manifest_installs_the_lock():
    pinned = [f"{name}=={version}" for name, version in lock.read_lock().items()]
    assert pinned, "requirements.lock is empty"
    for manifest in lock.MANIFESTS:
        assert lock.manifest_pins(manifest) == pinned, manifest.name


def test_the_lock_pins_every_runtime_dependency_within_its_floor():
    locked = {canonicalize_name(name): version for name, version in lock.read_lock().items()}
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for line in project["dependencies"]:
        requirement = Requirement(line)
        name = canonicalize_name(requirement.name)
        assert name in locked, f"{name} is not in requirements.lock"
        assert requirement.specifier.contains(locked[name]), f"{name}=={locked[name]} is below {requirement}"
