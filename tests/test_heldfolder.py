"""Where a held folder went (linkkernel.heldfolder), on real folders: no kernel. How the cache
store follows a notebook renamed under two kernels is in test_qa_left.py and test_qa_concurrent.py."""

from __future__ import annotations

from pathlib import Path

from linkkernel.heldfolder import HeldFolder


def test_a_folder_not_made_yet_is_not_held_until_it_is(tmp_path: Path):
    folder, path = HeldFolder(), str(tmp_path / "cache")
    assert folder.moved_to(path) is None and not folder.held()
    (tmp_path / "cache").mkdir()
    assert folder.moved_to(path) is None and folder.held()


def test_a_folder_renamed_beside_itself_is_found_there(tmp_path: Path):
    (tmp_path / "old").mkdir()
    folder = HeldFolder()
    folder.moved_to(str(tmp_path / "old"))
    assert folder.moved_to(str(tmp_path / "old")) is None  # not moved
    (tmp_path / "old").rename(tmp_path / "new")
    (tmp_path / "old").mkdir()  # another notebook's folder at the old name: not the one held
    assert folder.moved_to(str(tmp_path / "old")) == str(tmp_path / "new")


def test_a_folder_moved_elsewhere_or_made_again_is_held_anew(tmp_path: Path):
    (tmp_path / "cache").mkdir()
    (tmp_path / "trash").mkdir()
    folder, path = HeldFolder(), str(tmp_path / "cache")
    folder.moved_to(path)
    (tmp_path / "cache").rename(tmp_path / "trash" / "cache")
    assert folder.moved_to(path) is None and not folder.held()  # gone, nothing there to hold
    (tmp_path / "cache").mkdir()
    assert folder.moved_to(path) is None and folder.held()
    (tmp_path / "cache").rmdir()
    (tmp_path / "cache").mkdir()  # a cache cleared, then written again
    assert folder.moved_to(path) is None
    (tmp_path / "cache").rename(tmp_path / "renamed")
    assert folder.moved_to(path) == str(tmp_path / "renamed")  # the new folder is the one held
