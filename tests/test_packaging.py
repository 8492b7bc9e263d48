"""What a user checks before adopting: the licence in both archives, one version."""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = (ROOT / "pyproject.toml").read_text()
LICENSE = (ROOT / "LICENSE").read_text()


def project_version() -> str:
    """The version that ``pyproject.toml`` declares."""
    found = re.search(r'^version = "([^"]+)"$', PYPROJECT, re.MULTILINE)
    assert found is not None
    return found.group(1)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The sdist and the wheel, built from this checkout by the project's own backend."""
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "hatchling", "build", "-d", str(out)],
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=60,
    )
    (sdist,) = out.glob("*.tar.gz")
    (wheel,) = out.glob("*.whl")
    return sdist, wheel


def test_the_licence_file_is_the_declared_licence() -> None:
    """``LICENSE`` holds the MIT licence that ``pyproject.toml`` declares as its licence
    and names as its licence file."""
    assert 'license = "MIT"' in PYPROJECT
    assert 'license-files = ["LICENSE"]' in PYPROJECT
    assert LICENSE.startswith("MIT License\n\nCopyright (c) 2026 the sanic-sqlalchemy developers\n")
    assert "Permission is hereby granted, free of charge" in LICENSE


def test_the_wheel_ships_the_licence(built: tuple[Path, Path]) -> None:
    """The wheel carries ``LICENSE`` in its metadata folder, and its metadata names the
    licence and the file."""
    _, wheel = built
    info = f"sanic_sqlalchemy-{project_version()}.dist-info"
    with zipfile.ZipFile(wheel) as archive:
        assert archive.read(f"{info}/licenses/LICENSE").decode() == LICENSE
        metadata = archive.read(f"{info}/METADATA").decode()
    assert "\nLicense-Expression: MIT\n" in metadata
    assert "\nLicense-File: LICENSE\n" in metadata


def test_the_sdist_ships_the_licence_and_the_changelog(built: tuple[Path, Path]) -> None:
    """The sdist carries ``LICENSE`` and ``CHANGELOG.md`` as they are in the repository,
    and no ``.git`` (a file in a git worktree)."""
    sdist, _ = built
    top = f"sanic_sqlalchemy-{project_version()}"
    with tarfile.open(sdist) as archive:
        assert f"{top}/.git" not in archive.getnames()
        for name in ("LICENSE", "CHANGELOG.md"):
            member = archive.extractfile(f"{top}/{name}")
            assert member is not None
            assert member.read().decode() == (ROOT / name).read_text()
        info = archive.extractfile(f"{top}/PKG-INFO")
        assert info is not None
        assert "\nLicense-Expression: MIT\n" in info.read().decode()


def test_one_version_everywhere() -> None:
    """``pyproject.toml``, the installed package's metadata and the newest entry of
    ``CHANGELOG.md`` state the same version."""
    changelog = (ROOT / "CHANGELOG.md").read_text()
    newest = re.search(r"^## \[(\d+\.\d+\.\d+)\]", changelog, re.MULTILINE)
    assert newest is not None
    assert newest.group(1) == project_version()
    assert importlib.metadata.version("sanic-sqlalchemy") == project_version()
