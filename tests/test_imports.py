"""Every module of the project imports in the environment README's install command makes.

A module that imports a package `pyproject.toml` does not declare fails here in CI's fresh
virtual environment, even on a machine where the package happens to be installed elsewhere.
"""

import importlib
import pkgutil

import pytest

import backtrans
import bench


def _modules(package) -> list[str]:
    return [package.__name__] + [
        info.name for info in pkgutil.walk_packages(package.__path__, prefix=f"{package.__name__}.")
    ]


@pytest.mark.parametrize("module", _modules(backtrans) + _modules(bench))
def test_module_imports(module):
    importlib.import_module(module)
