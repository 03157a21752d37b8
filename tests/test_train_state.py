"""A run folder read without a trainer (``stylegan.training.train_state.run_progress`` / ``export_run``):
the same answers, refusals and export bytes as building a ``Trainer`` on it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from stylegan.checkpoint import CONFIG_NAME, WEIGHTS_NAME, CheckpointError, load_checkpoint, save_checkpoint
from stylegan.training import Trainer
from stylegan.training.train_state import export_run, run_progress
from tests.helpers import tiny_model_config as tiny_model
from tests.helpers import tiny_train_config as tiny_train
from tests.helpers import write_toy_data


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return write_toy_data(tmp_path / "data")


def _same_as_trainer(run: Path, data: Path, **train_kw: object) -> None:
    m, t = tiny_model(), tiny_train(**train_kw)
    at = run_progress(run, m, t, data)
    tr = Trainer(m, t, data, run)
    assert at.kimg == tr.kimg and at.checkpoint == tr.resumed_from
    assert [at.done(s.resolution) for s in tr.stages] == [tr.stage_done(s.resolution) for s in tr.stages]
    tr.close()


@pytest.mark.parametrize("train_kw", [{}, {"channels_last": True, "augment": "ada", "ada_interval": 1}],
                         ids=["plain", "channels-last-ada"])
def test_progress_and_export_match_a_trainer_on_the_run(data: Path, tmp_path: Path, train_kw: dict) -> None:
    run = tmp_path / "run"
    m, t = tiny_model(), tiny_train(**train_kw)
    fresh = run_progress(run, m, t, data)
    assert (fresh.kimg, fresh.finished, fresh.checkpoint) == (0.0, (), None)
    tr = Trainer(m, t, data, run)
    tr.run_stage(4)
    tr.run(max_steps=1)  # into the 8x8 fade-in: a rolling checkpoint newer than stage-4.pt
    tr.close()
    _same_as_trainer(run, data, **train_kw)
    assert run_progress(run, m, t).finished == (4,)
    for stopped_at in ("mid-stage", "finished"):
        if stopped_at == "finished":
            tr = Trainer(m, t, data, run)
            tr.run()
            tr.close()
            _same_as_trainer(run, data, **train_kw)
        meta = {"run_key": "k"}
        Trainer(m, t, data, run).export(tmp_path / f"a-{stopped_at}", metadata=meta)
        export_run(run, tmp_path / f"b-{stopped_at}", m, t, metadata=meta)
        for name in (WEIGHTS_NAME, CONFIG_NAME):
            a, b = (tmp_path / f"{x}-{stopped_at}" / name for x in "ab")
            assert a.read_bytes() == b.read_bytes(), (stopped_at, name)


def test_progress_refuses_what_resuming_refuses(data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    m = tiny_model()
    Trainer(m, tiny_train(), data, run).run(max_steps=1)
    Trainer(m, tiny_train(), data, run).run(max_steps=1)
    run_progress(run, m, tiny_train(tick_kimg=1.0))  # a bookkeeping change is the same run
    with pytest.raises(CheckpointError, match="different model/train params"):
        run_progress(run, m, tiny_train(lr=0.01))
    with pytest.raises(CheckpointError, match="different model/train params"):
        export_run(run, tmp_path / "out", m, tiny_train(lr=0.01))
    with pytest.raises(FileNotFoundError, match=r"resolution\(s\) \[8\]"):
        run_progress(run, m, tiny_train(), write_toy_data(tmp_path / "small", resolutions=(4,)))

    ckpts = sorted((run / "checkpoints").glob("ckpt-*.pt"))
    state = load_checkpoint(ckpts[0])
    key = next(k for k in state["G"] if k.endswith("weight"))
    state["G"][key] = torch.zeros(*state["G"][key].shape, 2)  # shaped as other network code built it
    save_checkpoint(ckpts[0], state)
    ckpts[-1].write_bytes(b"not a checkpoint")  # the newest is skipped, as a Trainer skips it
    with pytest.warns(UserWarning, match="skipped unreadable checkpoint"), \
            pytest.raises(CheckpointError, match="does not fit the networks this code builds"):
        run_progress(run, m, tiny_train())
    ckpts[0].write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="no readable checkpoint"):
        run_progress(run, m, tiny_train())
