"""benchmarks/quality.py at equal compute: a recipe trains until its CPU budget is spent, exports
the resolution it is training, and a larger budget resumes the same run instead of restarting."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from stylegan.training.effnet import weights_available
from tests.helpers import alarm, write_noise_data

TINY = ["model.max_resolution=16", "model.z_dim=16", "model.w_dim=16", "model.mapping_layers=2",
        "model.fmap_base=32", "model.fmap_max=16", "train.start_resolution=4", "train.max_resolution=16",
        "train.fade_kimg=0.016", "train.stab_kimg=0.016", "train.tick_kimg=0.016", "train.snapshot_kimg=100",
        "evaluate.num_real=64"]


@pytest.mark.slow  # end to end (torchrun / a served deployment / a whole recipe): not in the quick loop
@pytest.mark.skipif(not weights_available(), reason="the EfficientNet weights are not installed")
def test_cpu_budget_stops_the_recipe_and_a_larger_budget_resumes_it(tmp_path: Path) -> None:
    from benchmarks import quality

    data = write_noise_data(tmp_path / "data", 64, (4, 8, 16))
    out = tmp_path / "out"
    args = ["--data", str(data), "--recipes", "profile-r1-1", "--tag", "toy", "--work", str(tmp_path / "work"),
            "--out", str(out), "--threads", "1", "--num-samples", "16"]
    for s in TINY:
        args += ["--set", s]

    def run(cpu_minutes: float) -> dict:
        # Under a budget the schedule never ends: a budget that fails to stop the run fails here, not hangs.
        with alarm(180, "the CPU budget did not stop training"):
            assert quality.main([*args, "--cpu-minutes", str(cpu_minutes)]) == 0
        return json.loads((out / "toy.jsonl").read_text().splitlines()[-1])

    first = run(5.0 / 60)
    # The schedule ends 16x16 at 0.08 kimg; under a budget the last stage runs on until 5 CPU-s are spent.
    assert first["start_kimg"] == 0 and first["kimg"] > 0.08 and first["resolution"] == 16
    assert 5.0 <= first["cpu_s"] < 40.0 and first["cpu_budget_s"] == pytest.approx(5.0)
    assert all(np.isfinite(first[k]) for k in ("fd_effnet", "precision", "recall", "swd"))
    assert (out / "toy-profile-r1-1.png").is_file()

    second = run(8.0 / 60)  # resumes where the first stopped and spends only the difference
    assert second["start_kimg"] == first["kimg"] and second["kimg"] > first["kimg"]
    assert 8.0 <= second["cpu_s"] < 50.0

    third = run(8.0 / 60)  # budget already spent: evaluates the same run again without training
    assert third["start_kimg"] == third["kimg"] == second["kimg"] and third["fd_effnet"] == second["fd_effnet"]
