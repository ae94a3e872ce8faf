"""Checkpoints load safely by default; full unpickling only when the user opts in."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
import torch

from detcompress.errors import CheckpointError
from detcompress.model.checkpoint import from_safe_message_hub, load_checkpoint, to_safe_message_hub


def test_plain_state_dict_loads(tmp_path: Path) -> None:
    path = tmp_path / "w.pth"
    torch.save({"state_dict": {"w": torch.ones(2)}, "meta": {"iter": 3}}, path)
    ckpt = load_checkpoint(path)
    assert torch.equal(ckpt["state_dict"]["w"], torch.ones(2))


def test_checkpoint_needing_unpickling_is_refused_unless_trusted(tmp_path: Path) -> None:
    path = tmp_path / "foreign.pth"
    # An arbitrary Python object: loading it means running its class's code.
    torch.save({"meta": argparse.Namespace(a=1)}, path)
    with pytest.raises(CheckpointError, match="--trust-checkpoint") as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)
    assert "\n" not in str(info.value)
    assert load_checkpoint(path, trust=True)["meta"].a == 1


def test_truncated_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "cut.pth"
    torch.save({"state_dict": {"w": torch.randn(1000)}}, path)
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(path, trust=True)


def test_missing_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "none.pth")


def test_message_hub_round_trip_in_plain_types(tmp_path: Path) -> None:
    from mmengine.logging import HistoryBuffer, MessageHub

    hub = MessageHub.get_instance("detcompress_test_hub")
    hub.update_scalar("train/loss", 1.5)
    hub.update_scalar("train/loss", 0.5)
    hub.update_info("eta", np.float64(3.0))
    hub.update_info("iter", 7)
    safe = to_safe_message_hub(hub.state_dict())
    path = tmp_path / "hub.pth"
    torch.save({"message_hub": safe}, path)
    loaded = torch.load(path, weights_only=True)["message_hub"]  # no allow-listing needed
    from_safe_message_hub(loaded)
    restored = MessageHub.get_instance("detcompress_test_hub_restored")
    restored.load_state_dict(loaded)
    buf = restored.get_scalar("train/loss")
    assert isinstance(buf, HistoryBuffer)
    assert buf.data[0].tolist() == [1.5, 0.5]
    assert restored.get_info("eta") == 3.0
    assert restored.get_info("iter") == 7
