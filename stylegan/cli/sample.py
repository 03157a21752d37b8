"""pokegan sample, mix and video: images, the style-mixing figure and interpolation animations from a generator."""

from __future__ import annotations

import argparse
from pathlib import Path

from stylegan.cli.models import open_model
from stylegan.cli.options import check_dir_arg, check_file_arg, check_psi, int_at_least, model_options, psi_options

MAX_MIXES = 1024  # mixes one `pokegan mix` call may ask for
MAX_FRAMES = 10_000  # frames one `pokegan video` call may ask for


# ---------------------------------------------------------------------------------------------
# pokegan sample


def _sample(args: argparse.Namespace) -> int:
    from stylegan.sampling import GRID_MAX, image_grid, iter_generate, parse_seeds, save_png, seed_filename

    seeds = parse_seeds(args.seeds)
    check_psi(args.psi)
    check_dir_arg(args.out, "--out")
    if args.grid:
        check_file_arg(args.grid, "--grid", "grid.png")
    G = open_model(args)
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
    captions = _explain(args, G, seeds, out) if args.explain and not args.projected_w else None
    if args.grid:
        if captions is not None:
            import numpy as np

            from stylegan.reports import captioned_grid

            save_png(captioned_grid(np.stack(shown), captions[: len(shown)]), args.grid)
        else:
            save_png(image_grid(shown), args.grid)
        print(f"wrote grid {args.grid} (the first {len(shown)} images)", flush=True)
    return 0


def _explain(args: argparse.Namespace, G: object, seeds: list[int], out: Path) -> list[list[str]]:
    """Print and write (out/looks_like.json) each seed's name and top-3 species; the grid's captions."""
    from stylegan.cli.models import pokedex_for
    from stylegan.io import atomic_write_json
    from stylegan.pokedex.explain import explain
    from stylegan.sampling import iter_generate

    dex = pokedex_for(args)
    found: dict[str, dict] = {}
    captions: list[list[str]] = []
    for part, images in iter_generate(G, seeds, 64, truncation_psi=args.psi, truncation_cutoff=args.cutoff,
                                      noise_mode=args.noise_mode):
        for seed, e in zip(part, explain(dex, images), strict=True):
            print(f"seed {seed}: {e.name} (looks like {e.caption()})", flush=True)
            found[str(seed)] = e.to_dict()
            captions.append([f"{seed}: {e.name}", *(str(m) for m in e.looks_like)])
    atomic_write_json(out / "looks_like.json", {"model": args.model, "truncation_psi": args.psi,
                                               "pokedex_sha256": dex.info["sha256"], "samples": found})
    print(f"wrote {out / 'looks_like.json'}", flush=True)
    return captions


def add_sample(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sample", help="generate images from an exported generator (or a models:/ URI)")
    model_options(p)
    p.add_argument("--seeds", default="0-63", help="e.g. 0-63 or 1,5,9-12")
    psi_options(p)
    p.add_argument("--cutoff", "--trunc-cutoff", type=int, default=None,
                   help="truncate only the first CUTOFF style layers (official StyleGAN: 8; default: all)")
    p.add_argument("--projected-w", default=None, metavar="FILE",
                   help="render the ws of this projected_w.npz (from pokegan project) instead of seeds: "
                        "proj00.png, ...")
    p.add_argument("--out", "--outdir", dest="out", default="samples", help="folder for one seedNNNN.png per seed")
    p.add_argument("--grid", default=None, metavar="FILE", help="also write all samples as one PNG grid")
    p.add_argument("--explain", action="store_true",
                   help="name each sample and list the 3 species it looks like (the Pokédex): printed, in "
                        "OUT/looks_like.json and as captions on --grid")
    p.add_argument("--pokedex", default=None, metavar="DIR",
                   help="the Pokédex for --explain (default: the one shipped with a pretrained: model, else "
                        "models/pokedex)")
    p.set_defaults(func=_sample)


# ---------------------------------------------------------------------------------------------
# pokegan mix: the paper's style-mixing figure


def _mix(args: argparse.Namespace) -> int:
    from stylegan.sampling import mix_styles, mixing_figure, parse_seeds, parse_styles, save_png

    rows, cols = parse_seeds(args.rows), parse_seeds(args.cols)
    if len(rows) * len(cols) > MAX_MIXES:
        raise ValueError(f"--rows x --cols asks for {len(rows) * len(cols)} mixes; at most {MAX_MIXES} per call")
    check_psi(args.psi)
    check_dir_arg(args.out, "--outdir")
    G = open_model(args)
    try:
        styles = parse_styles(args.styles, int(G.num_ws))
    except ValueError as exc:
        raise ValueError(f"--styles {args.styles.strip()!r}: {exc}") from None
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


def add_mix(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("mix", help="style-mixing figure: row seeds take the column seeds' styles (the paper's figure)")
    model_options(p)
    p.add_argument("--rows", required=True, help="destination seeds, down the left, e.g. 85,100,75")
    p.add_argument("--cols", required=True, help="source seeds, across the top, whose styles are copied in")
    p.add_argument("--styles", default="coarse",
                   help="style layers taken from the columns: coarse (4-8 px), middle (16-32), fine (64+), "
                        "or an inclusive layer range as NVIDIA's 0-6")
    psi_options(p, default=1.0)
    p.add_argument("--outdir", "--out", dest="out", default="out", help="ROW-COL.png per mix, and grid.png")
    p.set_defaults(func=_mix)


# ---------------------------------------------------------------------------------------------
# pokegan video: an interpolation animation


def _video(args: argparse.Namespace) -> int:
    from stylegan.sampling import interpolate, parse_seeds, path_length, save_animation

    seeds = parse_seeds(args.seeds)
    if len(seeds) < 2:
        raise ValueError(f"--seeds needs at least two seeds to move between, got {args.seeds!r}")
    # The limit counts the transitions' frames: without --loop, not the closing keyframe.
    total = path_length(len(seeds), args.frames, args.loop) - (0 if args.loop else 1)
    if total > MAX_FRAMES:
        raise ValueError(f"{total} frames asked for; at most {MAX_FRAMES:,} (fewer --seeds or --frames)")
    check_psi(args.psi)
    check_file_arg(args.output, "--output", "video.gif")
    if Path(args.output).suffix.lower() not in (".gif", ".mp4"):
        raise ValueError(f"--output {args.output}: use a .gif or .mp4 file name")
    if Path(args.output).suffix.lower() == ".mp4":
        try:
            import imageio_ffmpeg  # noqa: F401
        except ImportError:
            raise ValueError("--output .mp4 needs imageio-ffmpeg: pip install 'pokegan[video]' (or write a .gif)") \
                from None
    G = open_model(args)
    frames = interpolate(G, seeds, steps=args.frames, space=args.space, truncation_psi=args.psi,
                         noise_mode=args.noise_mode, loop=args.loop)
    path = save_animation(frames, args.output, fps=args.fps, scale=args.scale)
    print(f"wrote {len(frames)} frames ({args.space} {'slerp' if args.space == 'z' else 'lerp'}) to {path}", flush=True)
    return 0


def add_video(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("video", help="interpolation animation through seeds (GIF; MP4 with the video extra)")
    model_options(p)
    p.add_argument("--seeds", required=True, help="keyframe seeds in order, e.g. 0-3 or 5,9,2")
    p.add_argument("--frames", "--w-frames", dest="frames", type=int_at_least(1), default=30,
                   help="frames per transition between two seeds")
    p.add_argument("--space", choices=["w", "z"], default="w", help="lerp in W or slerp in Z")
    p.add_argument("--loop", action=argparse.BooleanOptionalAction, default=True,
                   help="return to the first seed (a seamless loop)")
    psi_options(p, default=1.0)
    p.add_argument("--fps", type=float, default=24.0, help="frames per second")
    p.add_argument("--scale", type=int_at_least(1), default=1, help="nearest-neighbour upscale of each frame")
    p.add_argument("--output", default="video.gif", help="a .gif, or .mp4 (needs imageio-ffmpeg)")
    p.set_defaults(func=_video)
