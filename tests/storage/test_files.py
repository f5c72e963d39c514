"""Snapshot files: written whole under a new name, durable (name and folders synced)
before the outbox names them, and a hard link (or a copy) for an upload."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from snapshot_processor.bundle.grouping import BundleRef
from snapshot_processor.storage.files import (
    PREPARE_AHEAD,
    bundle_path,
    keep_linked,
    make_folders,
    next_preparation,
    prepare_day_folders,
    write_atomically,
)


def test_a_write_into_new_folders_makes_them_and_leaves_no_part_file(tmp_path: Path) -> None:
    path = tmp_path / "snapshots" / "cam" / "2026-11-24" / "one.jpg"

    write_atomically(path, b"jpeg bytes")

    assert path.read_bytes() == b"jpeg bytes"
    assert sorted(p.name for p in path.parent.iterdir()) == ["one.jpg"]


def test_make_folders_names_only_the_folders_it_made_outermost_first(tmp_path: Path) -> None:
    (tmp_path / "snapshots").mkdir()
    made = make_folders(tmp_path / "snapshots" / "cam" / "day")
    assert made == [tmp_path / "snapshots" / "cam", tmp_path / "snapshots" / "cam" / "day"]
    assert make_folders(tmp_path / "snapshots" / "cam" / "day") == []


def test_a_folder_removed_after_it_was_made_is_made_again(tmp_path: Path) -> None:
    day = tmp_path / "cam" / "day"
    write_atomically(day / "one.jpg", b"first")
    (day / "one.jpg").unlink()
    day.rmdir()  # retention emptied and removed it: remembering it made must not skip it

    assert make_folders(day) == [day]
    write_atomically(day / "two.jpg", b"second")
    assert (day / "two.jpg").read_bytes() == b"second"


def test_a_failed_write_leaves_neither_the_file_nor_a_part(tmp_path: Path) -> None:
    path = tmp_path / "day" / "one.jpg"
    (tmp_path / "day").mkdir()
    (tmp_path / "day" / ".one.jpg.part").symlink_to(tmp_path / "elsewhere")

    with pytest.raises(OSError, match="symbolic link"):
        write_atomically(path, b"jpeg")  # the part name is a link: never followed

    assert not path.exists()
    assert not (tmp_path / "elsewhere").exists()


def test_an_upload_is_kept_as_a_hard_link_to_the_same_file(tmp_path: Path) -> None:
    source = tmp_path / "upload" / "in.jpg"
    source.parent.mkdir()
    source.write_bytes(b"uploaded")
    target = tmp_path / "snapshots" / "yard" / "day" / "in.jpg"

    keep_linked(target, source, b"uploaded")

    assert target.read_bytes() == b"uploaded"
    assert os.path.samefile(target, source)


def test_an_upload_written_to_after_it_was_read_is_kept_as_the_bytes_read(
    tmp_path: Path,
) -> None:
    source = tmp_path / "upload" / "in.jpg"
    source.parent.mkdir()
    source.write_bytes(b"uploaded, and more written later")
    target = tmp_path / "snapshots" / "yard" / "day" / "in.jpg"

    keep_linked(target, source, b"uploaded")  # what was read, and what the event carries

    assert target.read_bytes() == b"uploaded"
    assert not os.path.samefile(target, source)


def test_threads_making_the_same_new_folders_each_return_with_them_made(tmp_path: Path) -> None:
    # Many cameras' first snapshots of a day arrive together: each writer must find every
    # folder on its path made, whoever made it, and nothing is made twice.
    root = tmp_path / "snapshots"
    folders = [root / f"cam{n % 4}" / "2026-11-24" for n in range(16)]
    made: list[list[Path]] = [[] for _ in folders]
    errors: list[BaseException] = []
    start = threading.Barrier(len(folders))

    def make(index: int) -> None:
        start.wait()
        try:
            made[index] = make_folders(folders[index])
            write_atomically(folders[index] / f"{index}.jpg", b"jpeg")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=make, args=(n,)) for n in range(len(folders))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    every = [folder for each in made for folder in each]
    assert sorted(every) == sorted({root, *(f.parent for f in folders), *folders})
    assert len(every) == len(set(every))  # each made by exactly one thread
    assert sorted(p.name for p in root.rglob("*.jpg")) == sorted(f"{n}.jpg" for n in range(16))


# --- the bundles' day folder, made ahead -----------------------------------------------
NOON = 1_795_953_600.0  # 2026-11-29 12:00 UTC
MIDNIGHT = 1_795_996_800.0  # 2026-11-30 00:00 UTC


def test_the_days_bundle_folder_is_made_where_its_bundles_go(tmp_path: Path) -> None:
    made = prepare_day_folders(tmp_path, NOON)
    bundles = tmp_path / "bundles"
    assert [p.relative_to(tmp_path).as_posix() for p in made] == [
        "bundles",
        "bundles/2026",
        "bundles/2026/11",
        "bundles/2026/11/29",
    ]
    # Where the day's bundles go, so the first one finds its day made.
    ref = BundleRef.new(NOON + 60, "hall pir", "Front Door camera")
    assert (
        bundle_path(tmp_path, ref.group, "Front Door camera", NOON + 60, "e1").parent.parent in made
    )
    assert prepare_day_folders(tmp_path, NOON) == []
    assert bundles.is_dir()


def test_the_next_days_folder_is_made_only_shortly_before_it(tmp_path: Path) -> None:
    early = prepare_day_folders(tmp_path, MIDNIGHT - PREPARE_AHEAD - 1)
    assert early[-1].relative_to(tmp_path).as_posix() == "bundles/2026/11/29"
    late = prepare_day_folders(tmp_path, MIDNIGHT - PREPARE_AHEAD + 1)
    assert [p.relative_to(tmp_path).as_posix() for p in late] == ["bundles/2026/11/30"]


def test_the_next_preparation_is_due_before_each_midnight() -> None:
    assert next_preparation(NOON) == MIDNIGHT - PREPARE_AHEAD - NOON
    # Just past the moment: the next one is a day later.
    assert next_preparation(MIDNIGHT - PREPARE_AHEAD) == 86_400
    assert next_preparation(MIDNIGHT - PREPARE_AHEAD + 1) == 86_400 - 1
    assert next_preparation(MIDNIGHT) == 86_400 - PREPARE_AHEAD
