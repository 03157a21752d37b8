"""Quality per recipe at equal compute: train each recipe on the same data for the same compute
(CPU time, ``--cpu-minutes``) or the same number of images (the schedule's kimg), then print
fd_effnet, precision, recall and SWD side by side (plus wall and CPU time, the load average
while it ran, and the learned noise strengths that explain the speckle).

    python benchmarks/quality.py --data data/prepared --cpu-minutes 16    # equal compute
    python benchmarks/quality.py --data data/prepared --recipes baseline,ada --set train.final_kimg=2
    python benchmarks/quality.py --data /tmp/artwork --recipes baseline,ada --tag artwork

``--cpu-minutes M`` is the equal-wall-time comparison made robust to a shared machine: each
recipe trains until its process has used M CPU-minutes (all threads; 16 = 8 minutes of this
2-core machine to itself), on the schedule given with ``--set`` but with the last stage never
ending, and the generator is exported at the resolution it is training then. Other jobs slow a
recipe's wall clock but not its CPU clock, so two recipes can run side by side with
``--threads 1``. Without it every recipe trains the schedule to its end (equal kimg). Wall time
and the 1-minute load average are printed beside each row. Each recipe trains in
``--work/<tag>-<recipe>`` and resumes there if the script is stopped; its grid (16 seeds,
psi 1, const noise) goes to ``--out/<tag>-<recipe>.png`` and, for recipes with ADA, the p and
r_t curves to ``--out/<tag>-<recipe>-ada.png``. All results are appended as JSON lines to
``--out/<tag>.jsonl``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stylegan.config import EvaluateConfig, load_params, section, set_override, set_overrides

# name -> overrides on top of params.yaml (and --set). Every recipe starts from BASE, the CPU
# profile before issue 12 (batch 32, style mixing 0.9, noise inputs learned at the full lr), so
# the table stays reproducible whatever params.yaml adopts. The noise recipes test why noise
# inputs paint speckle: noise_lr_mul 0 keeps every strength at its initial 0 (= no noise while
# training), 0.1 lets them grow ten times slower.
BASE = ["train.batch_size=32", "model.style_mixing_prob=0.9", "train.noise_lr_mul=1.0", "train.augment=none",
        "train.r1_gamma=10.0"]
B16_NOMIX = ["train.batch_size=16", "model.style_mixing_prob=0"]
PROFILE = [*B16_NOMIX, "train.noise_lr_mul=0.1"]
DIFFAUGMENT = "train.augment_ops=[translate,brightness,saturation,contrast,cutout]"
PROJECTED_NOCOLOR = ["model.discriminator=projected", "train.loss=hinge", "train.lr=0.0002", "train.r1_gamma=0",
                     "train.augment=fixed", "train.augment_p=1.0", "train.augment_ops=[translate,cutout]"]
PROJECTED = [*PROJECTED_NOCOLOR, DIFFAUGMENT]
# Both Ds: the pixel D keeps its logistic loss and R1; the feature D its hinge loss (losses.build_loss).
BOTH = ["model.discriminator=both", "train.lr=0.0002", "train.augment=fixed", "train.augment_p=1.0", DIFFAUGMENT]
RECIPES: dict[str, list[str]] = {
    "baseline": [],
    "ada": ["train.augment=ada", "train.ada_kimg=10"],
    "r1-auto": ["train.r1_gamma=auto"],
    "b16-nomix": B16_NOMIX,
    "b16-nomix-noiselr0.1": [*B16_NOMIX, "train.noise_lr_mul=0.1"],
    "b16-nomix-nonoise": [*B16_NOMIX, "train.noise_lr_mul=0"],
    "b16-nomix-nonoise-ada": [*B16_NOMIX, "train.noise_lr_mul=0", "train.augment=ada", "train.ada_kimg=10"],
    # The CPU profile params.yaml adopted (b16-nomix-noiselr0.1) with one more change each.
    "profile-ada": [*PROFILE, "train.augment=ada", "train.ada_kimg=10"],
    "profile-r1-1": [*PROFILE, "train.r1_gamma=1.0"],
    "profile-lr0.001": [*PROFILE, "train.lr=0.001"],
    # Issue 19's study: today's profile against a projected discriminator (Projected GAN: frozen
    # EfficientNet-Lite0 features, hinge loss, DiffAugment colour + translation + cutout on all D
    # sees, lr 0.0002, no R1) and the sum of both Ds, at 16 CPU-minutes, judged in dex features.
    "progan": PROFILE,
    "projected-64": [*PROFILE, *PROJECTED, "model.projected_input=64"],
    "projected-128": [*PROFILE, *PROJECTED, "model.projected_input=128"],
    "projected-64-lr0.002": [*PROFILE, *PROJECTED, "model.projected_input=64", "train.lr=0.002"],
    "projected-64-nocolor": [*PROFILE, *PROJECTED_NOCOLOR, "model.projected_input=64"],
    "both-64": [*PROFILE, *BOTH, "model.projected_input=64"],
    # A lighter G and D at 32x32: half the channels, more kimg per CPU-minute.
    "light": [*PROFILE, "model.fmap_base=512", "model.fmap_max=64"],
}


class BudgetSpent(Exception):
    """Raised from a tick callback once the recipe has used its CPU budget."""


class Ticks:
    """Keeps every tick's stats; with a budget, stops training at the first tick past it."""

    def __init__(self, cpu_budget_s: float | None = None, cpu_used_s: float = 0.0) -> None:
        self.rows: list[dict[str, Any]] = []
        self.budget, self.used_before, self.t0 = cpu_budget_s, cpu_used_s, time.process_time()

    @property
    def cpu_s(self) -> float:
        return self.used_before + time.process_time() - self.t0

    def on_tick(self, stats: dict[str, Any]) -> None:
        self.rows.append(dict(stats))
        if self.budget is not None and self.cpu_s >= self.budget:
            raise BudgetSpent


def noise_strengths(G: torch.nn.Module) -> dict[str, float]:
    """Mean |strength| of the noise inputs per resolution (0 at init; what the speckle grows from)."""
    out: dict[str, list[float]] = {}
    for name, p in G.named_parameters():
        if ".noise" in name and name.endswith(".weight"):
            block = name.split(".")[1]  # synthesis.b32.noise0.weight -> b32
            out.setdefault(block, []).append(float(p.detach().abs().mean()))
    return {k: float(np.mean(v)) for k, v in out.items()}


@torch.no_grad()
def noise_to_signal(G: torch.nn.Module, seeds: int = 64) -> dict[str, dict[str, float]]:
    """Per noise input: mean |strength|, the median over (sample, channel) of |strength| divided
    by the spatial std of the activation it is added to, and the share of channels above 0.5."""
    from stylegan.sampling import seeds_to_z
    from stylegan.training.layers import NoiseInjection

    out: dict[str, dict[str, float]] = {}
    hooks = []
    for name, mod in G.named_modules():
        if isinstance(mod, NoiseInjection):
            def hook(m: NoiseInjection, args: tuple, name: str = name) -> None:
                ratio = m.weight.abs().view(1, -1) / args[0].float().std(dim=(2, 3)).clamp_min(1e-8)
                out[name.removeprefix("synthesis.")] = {"strength": float(m.weight.abs().mean()),
                                                        "median_ratio": float(ratio.median()),
                                                        "share_above_half": float((ratio > 0.5).float().mean())}
            hooks.append(mod.register_forward_pre_hook(hook))
    try:
        G(seeds_to_z(list(range(seeds)), G.z_dim), noise_mode="none")
    finally:
        for h in hooks:
            h.remove()
    return out


def measure(G: torch.nn.Module, data: Path, cfg: EvaluateConfig) -> dict[str, float]:
    from stylegan.metrics import stats
    from stylegan.metrics.evaluate import evaluation_samples, random_features
    from stylegan.metrics.reference import ReferenceSet
    from stylegan.metrics.swd import swd
    from stylegan.training.effnet import FeatureExtractor

    ref = ReferenceSet(data, int(G.img_resolution), num_real=cfg.num_real, seed=cfg.seed, cache_dir=cfg.cache_dir)
    fake = evaluation_samples(G, cfg)
    out = {"swd": swd(ref.images, fake, min_resolution=cfg.swd_min_resolution, seed=cfg.seed)["swd"]}
    effnet = FeatureExtractor(batch_size=cfg.batch_size, device="cpu")
    real_f, fake_f = ref.features("effnet", effnet), effnet(fake)
    out["fd_effnet"] = stats.frechet_distance_features(real_f, fake_f)
    out["precision"], out["recall"] = stats.precision_recall(real_f, fake_f, k=cfg.pr_k, seed=cfg.seed)
    rand = random_features(torch.device("cpu"), cfg.batch_size)
    out["fd_random"] = stats.frechet_distance_features(ref.features("random-seed0", rand), rand(fake))
    if cfg.pokedex is not None:  # the in-domain yardstick (the study's judge)
        from stylegan.pokedex import load_pokedex

        dex = load_pokedex(cfg.pokedex)
        real_d, fake_d = ref.features(f"dex-{dex.info['sha256'][:16]}", dex), dex(fake)
        out["fd_dex"] = stats.frechet_distance_features(real_d, fake_d)
        out["precision_dex"], out["recall_dex"] = stats.precision_recall(real_d, fake_d, k=cfg.pr_k, seed=cfg.seed)
    return out


def run_recipe(name: str, params: dict[str, Any], data: Path, work: Path, out: Path, tag: str,
               eval_cfg: EvaluateConfig, cpu_budget_s: float | None = None) -> dict[str, Any]:
    from stylegan.checkpoint import export_generator, load_generator
    from stylegan.io import atomic_write_json
    from stylegan.reports import line_plot
    from stylegan.sampling import generate, image_grid, save_png
    from stylegan.training import Trainer

    run_dir = work / f"{tag}-{name}"
    if cpu_budget_s is not None:
        set_override(params, "train.final_kimg=1000000")  # the budget ends the run, not the schedule
    model_cfg, train_cfg = section(params, "model"), section(params, "train")
    spent = run_dir / "cpu_seconds.json"  # CPU time of earlier (stopped) invocations
    ticks = Ticks(cpu_budget_s, json.loads(spent.read_text())["cpu_s"] if spent.exists() else 0.0)
    trainer = Trainer(model_cfg, train_cfg, data, run_dir, device="cpu", callbacks=[ticks])
    load0, t0, start_kimg = os.getloadavg()[0], time.perf_counter(), trainer.kimg
    if cpu_budget_s is None:
        trainer.run()
    elif ticks.cpu_s < cpu_budget_s:
        with contextlib.suppress(BudgetSpent):
            trainer.run()
        trainer.save()
        atomic_write_json(spent, {"cpu_s": ticks.cpu_s})
    wall, cpu = time.perf_counter() - t0, ticks.cpu_s
    load1 = os.getloadavg()[0]
    phase = trainer.phase
    if cpu_budget_s is not None and phase.alpha >= 1.0:
        # The last stage never finishes under a budget: export the resolution being trained.
        export = export_generator(trainer.G_ema, run_dir / "export", phase.resolution, {"kimg": trainer.kimg})
    else:  # the highest finished stage (mid fade-in: the resolution below)
        export = trainer.export(run_dir / "export")
    G = load_generator(export.parent)
    res = int(G.img_resolution)
    metrics = measure(G, data, eval_cfg)
    imgs = generate(G, seeds=list(range(16)), truncation_psi=1.0, noise_mode="const")
    if eval_cfg.pokedex is not None:  # each tile captioned with its name and "looks like" list
        from stylegan.pokedex import load_pokedex
        from stylegan.pokedex.explain import explain
        from stylegan.reports import captioned_grid

        found = explain(load_pokedex(eval_cfg.pokedex), imgs)
        save_png(captioned_grid(imgs, [[f"{i}: {e.name}", *(str(m) for m in e.looks_like)]
                                       for i, e in enumerate(found)]), out / f"{tag}-{name}.png")
    else:
        save_png(image_grid(imgs, cols=8, pad=1), out / f"{tag}-{name}.png")
    row: dict[str, Any] = {"tag": tag, "recipe": name, "start_kimg": round(start_kimg, 3),
                           "kimg": round(trainer.kimg, 3), "resolution": res,
                           "wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "load_start": load0,
                           "load_end": load1, "cpu_budget_s": cpu_budget_s, **metrics,
                           "noise_strength": noise_strengths(G), "noise_to_signal": noise_to_signal(G)}
    if trainer.ada is not None:
        p = float(trainer.ada.p)
        row["augment_p"] = p
        if ticks.rows:
            kimg = np.array([r["kimg"] for r in ticks.rows], float)
            series = {"p": np.array([r.get("augment_p", np.nan) for r in ticks.rows], float),
                      "r_t": np.array([r.get("ada_rt", np.nan) for r in ticks.rows], float)}
            save_png(line_plot(kimg, series, title=f"ADA on {tag}: p and r_t (target {train_cfg.ada_target})",
                               xlabel="kimg", size=(480, 240)), out / f"{tag}-{name}-ada.png")
            row["ada_curve"] = [[round(k, 3), round(a, 4), round(b, 4)] for k, a, b in
                                zip(kimg, series["p"], series["r_t"], strict=True)]
    with (out / f"{tag}.jsonl").open("a") as f:
        f.write(json.dumps(row) + "\n")
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", help="prepared data folder (images_<R>.npy), e.g. data/prepared")
    ap.add_argument("--analyse-noise", nargs="+", metavar="EXPORT", default=None,
                    help="only print noise_to_signal of these exported generators (no training)")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--recipes", default=",".join(RECIPES), help=f"comma list of {', '.join(RECIPES)}")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="override for every recipe (e.g. a shorter schedule)")
    ap.add_argument("--tag", default="sprites", help="names the data in outputs")
    ap.add_argument("--work", default="runs/quality", help="run folders (a stopped benchmark resumes)")
    ap.add_argument("--out", default="docs/quality", help="grids, ADA curves and the JSON lines")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cpu-minutes", type=float, default=None,
                    help="train each recipe for this much CPU time (all threads) instead of to the schedule's end")
    ap.add_argument("--num-samples", type=int, default=500, help="fakes per metric (as evaluate.num_samples)")
    ap.add_argument("--pokedex", default=None, metavar="DIR",
                    help="judge in this Pokédex's features too (fd_dex, precision_dex, recall_dex) and caption the "
                         "grids; e.g. models/pokedex")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.analyse_noise:
        from stylegan.checkpoint import load_generator

        for path in args.analyse_noise:
            for layer, v in noise_to_signal(load_generator(path)).items():
                print(f"{path} {layer}: mean |w| {v['strength']:.4f}, median |w|/std(x) {v['median_ratio']:.3f}, "
                      f"channels with |w| > 0.5 std(x): {v['share_above_half']:.2f}")
        return 0
    if not args.data:
        ap.error("--data is required (or --analyse-noise EXPORT ...)")
    names = [n for n in args.recipes.split(",") if n]
    unknown = [n for n in names if n not in RECIPES]
    if unknown:
        ap.error(f"unknown recipe(s) {unknown}; choose from {list(RECIPES)}")
    data, work, out = Path(args.data), Path(args.work), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    base = load_params(args.params, args.set)
    ev = section(base, "evaluate")
    eval_cfg = EvaluateConfig(num_samples=args.num_samples, num_real=ev.num_real, seed=0, batch_size=64,
                              cache_dir=str(work / "cache"), pr_k=ev.pr_k, swd_min_resolution=ev.swd_min_resolution,
                              pokedex=args.pokedex)
    rows = []
    for name in names:
        params = set_overrides(json.loads(json.dumps(base)), [*BASE, *RECIPES[name]])
        budget = None if args.cpu_minutes is None else 60.0 * args.cpu_minutes
        row = run_recipe(name, params, data, work, out, args.tag, eval_cfg, budget)
        rows.append(row)
        print(f"{args.tag} {name}: {json.dumps({k: v for k, v in row.items() if k != 'ada_curve'})}", flush=True)
    nan = float("nan")
    print("\n| data | recipe | res | kimg | fd_dex | precision_dex | recall_dex | fd_random | fd_effnet | precision | "
          "recall | SWD | CPU min | wall s | load avg | noise |w| top res |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        ns = r["noise_strength"]
        top = ns.get(f"b{r['resolution']}", float("nan"))
        print(f"| {r['tag']} | {r['recipe']} | {r['resolution']} | {r['kimg']:.1f} | {r.get('fd_dex', nan):.2f} | "
              f"{r.get('precision_dex', nan):.3f} | {r.get('recall_dex', nan):.3f} | {r['fd_random']:.3f} | "
              f"{r['fd_effnet']:.1f} | "
              f"{r['precision']:.3f} | {r['recall']:.3f} | {r['swd']:.1f} | {r['cpu_s'] / 60:.1f} | "
              f"{r['wall_s']:.0f} | "
              f"{r['load_start']:.1f}-{r['load_end']:.1f} | "
              f"{top:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
