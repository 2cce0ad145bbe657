"""Results are written atomically and with the permissions a plain mkdir/open would give."""

from __future__ import annotations

import os
import stat

import pytest

from il2treg._io import atomic_output_dir, atomic_write_text


@pytest.fixture
def umask():
    """Set the process umask for one test and restore it afterwards."""
    saved = os.umask(0o022)
    os.umask(saved)
    yield lambda mask: os.umask(mask)
    os.umask(saved)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize(("mask", "folder", "file"), [(0o022, 0o755, 0o644), (0o077, 0o700, 0o600), (0o002, 0o775, 0o664)], ids=["022", "077", "002"])
def test_outputs_get_the_mode_of_mkdir_and_open_under_the_umask(tmp_path, umask, mask, folder, file):
    umask(mask)
    with atomic_output_dir(tmp_path / "results") as tmp:
        (tmp / "table.csv").write_text("a\n")
    atomic_write_text(tmp_path / "report.md", "# report\n")
    assert _mode(tmp_path / "results") == folder
    assert _mode(tmp_path / "results" / "table.csv") == file
    assert _mode(tmp_path / "report.md") == file


def test_a_forced_replacement_gets_the_new_folders_mode(tmp_path, umask):
    umask(0o077)
    with atomic_output_dir(tmp_path / "results") as tmp:
        (tmp / "old.csv").write_text("a\n")
    umask(0o022)
    with atomic_output_dir(tmp_path / "results", force=True) as tmp:
        (tmp / "new.csv").write_text("b\n")
    assert _mode(tmp_path / "results") == 0o755
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results"]
    assert sorted(p.name for p in (tmp_path / "results").iterdir()) == ["new.csv"]


def test_a_rewritten_file_keeps_its_mode(tmp_path, umask):
    umask(0o022)
    path = tmp_path / "model.toml"
    path.write_text("old\n")
    path.chmod(0o640)
    atomic_write_text(path, "new\n")
    assert path.read_text() == "new\n" and _mode(path) == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.toml"]


def test_a_failed_write_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError), atomic_output_dir(tmp_path / "results") as tmp:
        (tmp / "half.csv").write_text("a\n")
        raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []
