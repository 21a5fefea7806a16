"""The vendored front-end files match the versions and sha256 sums recorded in static/vendor/VENDORED.md."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

VENDOR_DIR = Path(__file__).resolve().parents[2] / "static" / "vendor"
MANIFEST = VENDOR_DIR / "VENDORED.md"
HEADER = ("file", "package", "source in tarball", "sha256", "licence")


@dataclass(frozen=True)
class VendoredFile:
    """One row of the manifest table."""

    file: str
    package: str
    source: str
    sha256: str
    licence: str


def _cells(line: str) -> list[str]:
    """Split a Markdown table row into stripped cells without backticks."""
    return [cell.strip().strip("`").strip() for cell in line.strip().strip("|").split("|")]


def parse_manifest(text: str) -> list[VendoredFile]:
    """Return the rows of the first table in `text` whose header is HEADER."""
    lines = text.splitlines()
    header_at = next(
        (
            index
            for index, line in enumerate(lines)
            if line.lstrip().startswith("|") and tuple(cell.lower() for cell in _cells(line)) == HEADER
        ),
        None,
    )
    if header_at is None:
        raise ValueError(f"no table with header {HEADER} in {MANIFEST.name}")
    rows: list[VendoredFile] = []
    for line in lines[header_at + 2 :]:  # skip the header and its | --- | separator
        if not line.lstrip().startswith("|"):
            break
        rows.append(VendoredFile(*_cells(line)))
    return rows


ROWS = parse_manifest(MANIFEST.read_text(encoding="utf-8"))


def test_manifest_lists_files() -> None:
    """The manifest table is found and not empty."""
    assert ROWS


@pytest.mark.parametrize("row", ROWS, ids=[row.file for row in ROWS])
def test_sha256_matches(row: VendoredFile) -> None:
    """Each vendored file exists and its bytes hash to the recorded sha256."""
    assert re.fullmatch(r"[0-9a-f]{64}", row.sha256), f"malformed sha256 for {row.file}"
    path = VENDOR_DIR / row.file
    assert path.is_file(), f"{row.file} is listed in VENDORED.md but missing"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == row.sha256


@pytest.mark.parametrize("row", ROWS, ids=[row.file for row in ROWS])
def test_file_name_carries_version(row: VendoredFile) -> None:
    """The file name contains the pinned package version, so templates show what they load."""
    _, _, version = row.package.rpartition("@")
    assert version, f"package {row.package!r} has no @version"
    assert version in row.file


def test_every_vendored_file_is_listed() -> None:
    """No file sits in static/vendor/ without a manifest row."""
    on_disk = {path.name for path in VENDOR_DIR.iterdir() if path.is_file() and path != MANIFEST}
    assert on_disk == {row.file for row in ROWS}
