"""Reading an upload: through the entry itself, never a link swapped in after it was looked at."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from snapshot_processor.ingest.stage import UploadRejectedError, read_upload
from tests.support.ftp import jpeg


def test_a_regular_file_is_read_whole(tmp_path: Path) -> None:
    path = tmp_path / "snap.jpg"
    path.write_bytes(jpeg("snap"))
    image, info = read_upload(path, 200_000)
    assert image == jpeg("snap")
    assert info.st_size == len(image)


def test_a_file_swapped_for_a_link_after_its_lstat_is_not_read(tmp_path: Path) -> None:
    secret = tmp_path / "outside" / "secret.jpg"
    secret.parent.mkdir()
    secret.write_bytes(jpeg("outside the upload dir"))
    path = tmp_path / "upload" / "snap.jpg"
    path.parent.mkdir()
    path.write_bytes(jpeg("the upload"))
    assert stat.S_ISREG(os.lstat(path).st_mode)  # what the stage saw when it looked
    # Then, before the read, the entry becomes a link to a file the daemon may read.
    link = path.with_name(".swap")
    link.symlink_to(secret)
    os.replace(link, path)

    with pytest.raises(UploadRejectedError) as caught:
        read_upload(path, 200_000)
    assert caught.value.reason == "symlink"
    assert path.is_symlink()
    assert secret.read_bytes() == jpeg("outside the upload dir")
