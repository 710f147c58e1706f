"""The package type-checks under mypy (configured in pyproject.toml).

The distribution maps ``oblivio.<part>`` onto top-level folders ([tool.setuptools] package-dir),
which mypy cannot follow through the editable install's import hook; so the check runs over a
tree of links that spells that mapping out, kept under .mypy_cache so its incremental cache
stays valid between runs.
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _package_tree() -> tuple[Path, list[str]]:
    """The link tree's root and the packages to check (the top-level ones of package-dir)."""
    package_dirs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    tree = ROOT / ".mypy_cache" / "package-tree"
    for package, folder in package_dirs.items():
        link = tree.joinpath(*package.split("."))
        link.parent.mkdir(parents=True, exist_ok=True)
        if not (link.is_symlink() and link.resolve() == (ROOT / folder).resolve()):
            link.unlink(missing_ok=True)
            link.symlink_to(ROOT / folder, target_is_directory=True)
    return tree, sorted(package_dirs)


def test_the_package_type_checks() -> None:
    tree, packages = _package_tree()
    command = [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"),
               "--cache-dir", str(ROOT / ".mypy_cache"), *(arg for p in packages for arg in ("-p", p))]
    result = subprocess.run(command, cwd=tree, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
