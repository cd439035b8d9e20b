"""Atomic writes and the own weight format."""

import os
import stat

import pytest
import torch

import pvt
from pvt.base.io import atomic_save_torch, atomic_write
from pvt.weights.checkpoint import read_own_format, save_model


def test_atomic_write_leaves_old_file_on_failure_and_no_temp_files(tmp_path):
    target = tmp_path / "a.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_write(target, "w") as f:
            f.write("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["a.txt"]
    with atomic_write(target, "w") as f:
        f.write("new")
    assert target.read_text() == "new" and os.listdir(tmp_path) == ["a.txt"]


def test_written_files_follow_the_umask_not_mkstemps_0600(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_save_torch({"a": torch.ones(2)}, tmp_path / "s.pt")
        mode = stat.S_IMODE(os.stat(tmp_path / "s.pt").st_mode)
    finally:
        os.umask(old)
    assert mode == 0o644


def test_own_format_round_trip_describes_itself(tmp_path):
    m = pvt.create_model("pvt_v2_b0", num_classes=4)
    path = save_model(m, tmp_path / "m.safetensors", extra={"class_names": ["a", "b", "c", "d"]})
    sd, meta = read_own_format(path)
    assert meta["format"] == "pvt" and meta["variant"] == "pvt_v2_b0"
    assert meta["config"]["num_classes"] == 4 and meta["class_names"] == ["a", "b", "c", "d"]
    assert sd.keys() == m.state_dict().keys()
    assert all(torch.equal(sd[k], v) for k, v in m.state_dict().items())
    (tmp_path / "other.safetensors").write_bytes(b"not a safetensors file")
    assert read_own_format(tmp_path / "other.safetensors") is None


def test_one_cache_root_for_the_data_and_the_compiled_code(tmp_path, monkeypatch):
    from pvt.accel.compile import inductor_cache_dir
    from pvt.base.io import cache_root
    from pvt.data.builtin import default_cache_dir
    from pvt.data.synthetic import default_shapes_root

    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.setenv("PVT_CACHE", str(tmp_path))
    assert (default_cache_dir(), default_shapes_root(), inductor_cache_dir()) == (
        tmp_path, tmp_path / "shapes", tmp_path / "inductor")
    monkeypatch.setenv("PVT_CACHE", "")  # set but empty: the default, not the working directory
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == cache_root() == tmp_path / "home" / ".cache" / "pvt"
    assert default_shapes_root() == tmp_path / "home" / ".cache" / "pvt" / "shapes"
