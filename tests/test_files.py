"""Run files are written atomically: a failed write leaves the previous file (or none), never a partial one."""

import errno
import json
import os

import pytest
import torch

import metatuv.files as files
from metatuv.files import RunFileError, save_torch, write_json, write_text


def test_written_whole_and_nothing_else_left(tmp_path):
    path = write_json(tmp_path / "results.json", {"test": 0.5, "ci": None})
    assert json.loads(path.read_text()) == {"test": 0.5, "ci": None}
    save_torch(tmp_path / "model.pt", {"w": torch.arange(3.0)})
    assert torch.equal(torch.load(tmp_path / "model.pt", weights_only=True)["w"], torch.arange(3.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt", "results.json"]


def test_nan_is_refused_and_the_old_file_stays(tmp_path):
    write_json(tmp_path / "results.json", {"test": 1.0})
    with pytest.raises(ValueError, match="Out of range float values are not JSON compliant"):
        write_json(tmp_path / "results.json", {"test": float("nan")})
    assert json.loads((tmp_path / "results.json").read_text()) == {"test": 1.0}


@pytest.mark.parametrize("stage", ["write", "fsync", "replace"])
def test_a_failed_write_leaves_the_previous_file_and_no_temp(tmp_path, monkeypatch, stage):
    target = tmp_path / "history.json"
    write_text(target, "old")

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    if stage == "write":  # the disk fills while writing: a partial temp file exists at that moment
        real_open = open

        class Half:
            def __init__(self, path, mode):
                self.f = real_open(path, mode)

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                self.f.close()

            def write(self, data):
                self.f.write(data[: len(data) // 2])
                self.f.flush()
                full()

        monkeypatch.setattr(files, "open", Half, raising=False)
    else:
        monkeypatch.setattr(files.os, stage if stage == "fsync" else "replace", full)
    with pytest.raises(RunFileError) as err:
        write_text(target, "new content, longer than the old one")
    assert str(err.value) == (
        f"cannot write {target}: No space left on device (Errno 28); free space on that disk, then rerun."
    )
    monkeypatch.undo()
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["history.json"]


def test_a_missing_folder_is_named(tmp_path):
    with pytest.raises(
        RunFileError, match=rf"cannot write {tmp_path / 'gone' / 'report.md'}: No such file or directory"
    ):
        write_text(tmp_path / "gone" / "report.md", "x")
