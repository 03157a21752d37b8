"""Many processes on torchrun (gloo on CPU): N processes train what one process trains.

The expensive part (two torchrun launches of `pokegan train --nproc-per-node 2`, each a
tiny config) runs once in a module fixture; the tests read its results.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from stylegan import shared
from stylegan.checkpoint import load_checkpoint, load_generator
from stylegan.config import ModelConfig, TrainConfig
from stylegan.training import Trainer, distributed
from stylegan.training.layers import MinibatchStd
from tests.helpers import (
    assert_nets_close,
    one_process_trainer,
    tiny_model_params,
    tiny_train_params,
    torchrun_train,
    write_torchrun_project,
)

MODEL = tiny_model_params(max_resolution=8)
# Global batch 8 with the default minibatch-stddev group of 4: two processes hold 4 rows each, one
# whole group each (the strided groups {0,2,4,6} and {1,3,5,7}). 6 steps: 4x4, 8x8 fade, 8x8.
# Augmentation on (p 0.5): each rank must draw it for the global batch and keep its rows.
TRAIN = tiny_train_params(max_resolution=None, batch_size=8, lr=0.002, augment="fixed", augment_p=0.5,
                          snapshot_kimg=0.024, keep_checkpoints=10, grid_seeds=[0, 1])
SPLIT = 3  # one process resumes the two-process run here: inside the 8x8 fade-in
STEPS = 6


def _assert_same_nets(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert (a["cur_nimg"], a["step"]) == (b["cur_nimg"], b["step"])
    assert_nets_close(a, b)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One process trains straight through; `pokegan train --nproc-per-node 2` resumes that run's
    checkpoint after step 1 and trains to the end (export included); one process resumes the
    two-process checkpoint at SPLIT and trains to the end. One torchrun launch in all."""
    root = tmp_path_factory.mktemp("dist")
    data, params = write_torchrun_project(root, MODEL, TRAIN)
    m, t = ModelConfig(**MODEL), TrainConfig(**TRAIN)
    one = one_process_trainer(m, t, data, root / "one")  # its 4x4 input as StyleGAN2's (see its docstring)
    one.run(max_steps=1)  # the one-process checkpoint that two processes will resume
    shutil.copytree(root / "one", root / "two")
    one.run()
    assert one.step == STEPS

    launch = torchrun_train(params, root / "two", "--export", str(root / "export"),
                            "--events", str(root / "events.jsonl"))
    two_then_one = None
    split = root / "two" / "checkpoints" / f"ckpt-{SPLIT * 8:09d}.pt"
    if launch.returncode == 0:
        (root / "two_then_one" / "checkpoints").mkdir(parents=True)
        shutil.copyfile(split, root / "two_then_one" / "checkpoints" / split.name)
        two_then_one = Trainer(m, t, data, root / "two_then_one")
        assert two_then_one.resumed_from is not None and two_then_one.step == SPLIT
        two_then_one.run()
    return {"root": root, "one": one, "launch": launch, "two_then_one": two_then_one,
            "one_at_split": load_checkpoint(root / "one" / "checkpoints" / split.name)}


@pytest.mark.slow  # end to end (torchrun / a served deployment / a whole recipe): not in the quick loop
def test_two_processes_train_what_one_process_trains(runs: dict[str, Any]) -> None:
    launch = runs["launch"]
    assert launch.returncode == 0, launch.stdout + launch.stderr
    assert "starting 2 processes with torchrun (gloo)" in launch.stdout
    two = load_checkpoint(runs["root"] / "two" / "checkpoints" / f"ckpt-{SPLIT * 8:09d}.pt")
    assert two["step"] == SPLIT and two["cur_nimg"] == SPLIT * 8  # the global batch, not per process
    _assert_same_nets(runs["one_at_split"], two)
    # w_avg moved by the mean w of the global batch, and G_ema followed G on every rank alike.
    assert two["G"]["mapping.w_avg"].abs().sum() > 0
    torch.testing.assert_close(two["G_ema"]["mapping.w_avg"], two["G"]["mapping.w_avg"])


@pytest.mark.slow  # end to end (torchrun / a served deployment / a whole recipe): not in the quick loop
def test_checkpoints_resume_across_process_counts(runs: dict[str, Any]) -> None:
    end = runs["one"].checkpoint_state()
    launch = runs["launch"]
    assert launch.returncode == 0, launch.stdout + launch.stderr
    # Written by 1 process (after step 1), resumed by 2 to the end: the uninterrupted run's stream.
    assert f"resumed from {runs['root'] / 'two' / 'checkpoints' / 'ckpt-000000008.pt'}" in launch.stdout
    _assert_same_nets(end, load_checkpoint(runs["root"] / "two" / "checkpoints" / "stage-8.pt"))
    # Written by 2 processes (at SPLIT), resumed by 1 to the end: the same again.
    _assert_same_nets(end, runs["two_then_one"].checkpoint_state())


@pytest.mark.slow  # end to end (torchrun / a served deployment / a whole recipe): not in the quick loop
def test_pokegan_train_on_two_processes_trains_to_the_end_and_exports(runs: dict[str, Any]) -> None:
    root, launch = runs["root"], runs["launch"]
    assert launch.returncode == 0, launch.stdout + launch.stderr
    G = load_generator(root / "export")
    assert G.img_resolution == 8
    torch.testing.assert_close(G.state_dict()["mapping.w_avg"], runs["one"].G_ema.mapping.w_avg, rtol=1e-5, atol=1e-5)
    # Rank 0 alone reports and writes: each line once, not once per process.
    assert launch.stdout.count("trained to kimg 0.048") == 1
    assert launch.stdout.count("exported G_ema") == 1
    assert sorted(p.name for p in (root / "two" / "snapshots").iterdir()) == sorted(
        p.name for p in (root / "one" / "snapshots").iterdir())
    # What a launcher follows (the Prefect flow): rank 0's events as JSON lines.
    events = [json.loads(line) for line in (root / "events.jsonl").read_text().splitlines()]
    ticks = [e["stats"] for e in events if e["event"] == "tick"]
    assert [round(s["kimg"], 3) for s in ticks] == [0.016, 0.024, 0.032, 0.04, 0.048]
    assert [e["resolution"] for e in events if e["event"] == "stage_end"] == [4, 8]
    assert all(Path(e["path"]).exists() for e in events if e["event"] == "snapshot")


def test_bad_process_counts_are_refused_before_torchrun_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from stylegan.cli import main

    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"model": MODEL, "train": TRAIN, "data": {"out_dir": str(tmp_path / "data")}}))
    base = ["train", "--params", str(params), "--run-dir", str(tmp_path / "r")]
    assert main([*base, "--nproc-per-node", "3"]) == 2  # batch 8 over 3 processes
    out = capsys.readouterr()
    assert "not divisible by 3 processes" in out.err and "torchrun" not in out.out
    assert main([*base, "--set", "train.nproc_per_node=0"]) == 2
    assert "train.nproc_per_node must be >= 1" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_shard_rows_keep_minibatch_stddev_groups() -> None:
    x = torch.randn(16, 3, 4, 4)
    mbstd = MinibatchStd(group_size=4)
    whole = mbstd(x)
    for world in (2, 4):
        parts = [distributed.shard_rows(16, world, r, 4) for r in range(world)]
        assert sorted(torch.cat(parts).tolist()) == list(range(16))  # every row exactly once
        for rows in parts:
            torch.testing.assert_close(mbstd(x[rows]), whole[rows])
    # A local batch smaller than a group cannot keep them: contiguous rows, and the trainer warns.
    assert distributed.shard_rows(8, 4, 1, 4).tolist() == [2, 3]
    assert not distributed.groups_preserved(8, 4, 4) and distributed.groups_preserved(8, 2, 4)
    with pytest.raises(ValueError, match="divisible"):
        distributed.shard_rows(6, 4, 0, 4)


def test_generator_draws_the_global_batch_randomness_for_its_rows() -> None:
    from stylegan.training.networks import Generator

    G = Generator(ModelConfig(**MODEL))
    with torch.no_grad():
        G.synthesis.b4.noise0.weight.fill_(1.0)  # make the random noise inputs matter
    z = torch.randn(8, 16)
    torch.manual_seed(3)
    whole = G(z, resolution=8, mixing_prob=0.9)
    for r in range(2):
        rows = distributed.shard_rows(8, 2, r, 4)
        torch.manual_seed(3)
        torch.testing.assert_close(G(z[rows], resolution=8, mixing_prob=0.9, shard=(8, rows)), whole[rows])


def test_strip_option_and_event_reader(tmp_path: Path) -> None:
    argv = ["train", "--nproc-per-node", "2", "--run-dir", "r", "--nproc=4", "--max-steps", "3"]
    assert distributed.strip_option(argv, "--nproc-per-node") == ["train", "--run-dir", "r", "--max-steps", "3"]
    log, reader = shared.EventLog(tmp_path / "e.jsonl"), shared.EventReader(tmp_path / "e.jsonl")
    assert list(reader.read()) == []  # no file yet
    log.on_tick({"kimg": 1.0})
    with (tmp_path / "e.jsonl").open("a") as f:
        f.write('{"event": "tick", "stats"')  # a line still being written is not read yet
    assert list(reader.read()) == [{"event": "tick", "stats": {"kimg": 1.0}}]
    with (tmp_path / "e.jsonl").open("a") as f:
        f.write(': {"kimg": 2.0}}\n')
    assert [e["stats"]["kimg"] for e in reader.read()] == [2.0]


def test_not_launched_by_torchrun_is_one_process(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    info = distributed.init_from_env(torch.device("cpu"))
    assert (info.rank, info.world_size, info.backend) == (0, 1, None)
    assert distributed.torchrun_command(2, ["train"])[1:6] == ["-m", "torch.distributed.run", "--standalone",
                                                                 "--nproc-per-node=2", "-m"]
