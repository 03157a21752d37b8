"""Real-image reference sets and their cached features.

The reference set is ``num_real`` images drawn (seeded) from ``images_<R>.npy``. Their
features are cached under ``cache_dir`` keyed by the *content hash* of that array file, the
resolution, the feature network, ``FEATURE_CACHE_VERSION``, ``num_real`` and the seed, so a
re-prepared dataset never reuses stale statistics even when its size and mtime look the
same, and features made by older code are not reused after the extraction changes.

Why hash the whole file: reading and hashing runs at roughly 1 GB/s (a 35k-image 64x64 set
is 430 MB, < 1 s), while the features it saves take minutes on a CPU. The hash itself is
memoised in ``cache_dir/hashes.json`` by (path, size, mtime_ns, inode), so an unchanged
file is not even re-read. All cache files are written atomically.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from stylegan.io import atomic_write_bytes, atomic_write_json
from stylegan.metrics.stats import seeded_rows
from stylegan.training.dataset import PackedDataset, array_path

_HASH_CHUNK = 16 << 20
# Bump whenever a feature network, its weights handling or its preprocessing (resize,
# scaling, batch-norm folding) changes: the cache key carries it, so old caches are ignored.
FEATURE_CACHE_VERSION = 3  # 3: Inception input by the TF1-exact resize and (x - 128) / 128


def file_hash(path: str | Path, memo_dir: str | Path | None = None) -> str:
    """blake2b of the file's bytes (hex), memoised by (path, size, mtime_ns, inode) when memo_dir is set."""
    path = Path(path).resolve()
    st = path.stat()
    key = f"{path}|{st.st_size}|{st.st_mtime_ns}|{st.st_ino}"
    memo_file = Path(memo_dir) / "hashes.json" if memo_dir is not None else None
    memo: dict[str, str] = {}
    if memo_file is not None and memo_file.is_file():
        try:
            memo = json.loads(memo_file.read_text())
        except (OSError, json.JSONDecodeError):
            memo = {}  # a damaged memo only costs a re-hash
        if key in memo:
            return memo[key]
    h = hashlib.blake2b(digest_size=20)
    with path.open("rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            h.update(chunk)
    digest = h.hexdigest()
    if memo_file is not None:
        memo = {k: v for k, v in memo.items() if not k.startswith(f"{path}|")}
        memo[key] = digest
        atomic_write_json(memo_file, memo)
    return digest


def reference_indices(n: int, num_real: int, seed: int) -> np.ndarray:
    """Sorted rows of the reference set: all when num_real is 0 or >= n, else a seeded draw."""
    return seeded_rows(n, n if num_real <= 0 else num_real, seed)


class ReferenceSet:
    """The real images evaluation compares against, with cached per-network features."""

    def __init__(
        self,
        data_root: str | Path,  # data/prepared (holds images_<R>.npy)
        resolution: int,  # the generator's resolution
        *,
        num_real: int,  # images drawn (0 = all)
        seed: int,  # draws the subset
        cache_dir: str | Path | None,  # None = no caching
    ) -> None:
        self.dataset = PackedDataset(data_root, resolution)
        self.resolution = resolution
        self.num_real = num_real
        self.seed = seed
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.indices = reference_indices(len(self.dataset), num_real, seed)
        self._images: np.ndarray | None = None
        self._hash: str | None = None

    @property
    def data_hash(self) -> str:
        if self._hash is None:
            self._hash = file_hash(array_path(self.dataset.root, self.resolution), self.cache_dir)
        return self._hash

    @property
    def images(self) -> np.ndarray:
        """uint8 (N, 3, R, R) reference images (loaded once)."""
        if self._images is None:
            self._images = self.dataset.get_batch(self.indices).numpy()
        return self._images

    def cache_path(self, net: str) -> Path | None:
        if self.cache_dir is None:
            return None
        name = (f"ref_{self.data_hash[:16]}_{self.resolution}px_{net}_v{FEATURE_CACHE_VERSION}"
                f"_n{len(self.indices)}_seed{self.seed}.npz")
        return self.cache_dir / name

    def features(self, net: str, extract: Callable[[np.ndarray], np.ndarray], batch: int = 512) -> np.ndarray:
        """float64 (N, D) features of the reference images; computed once per data hash and cached."""
        path = self.cache_path(net)
        if path is not None and path.is_file():
            try:
                with np.load(path) as z:
                    if np.array_equal(z["indices"], self.indices):  # the version is in the file name
                        return z["features"].astype(np.float64)
            except (OSError, ValueError, KeyError):
                pass  # unreadable cache: recompute and replace it
        feats = np.concatenate(
            [extract(self.dataset.get_batch(self.indices[i : i + batch]).numpy())
             for i in range(0, len(self.indices), batch)]
        )
        # Networks output float32, so storing float32 is lossless: cached and fresh runs agree exactly.
        feats32 = feats.astype(np.float32)
        if path is not None:
            import io

            buf = io.BytesIO()
            np.savez(buf, indices=self.indices, features=feats32, data_hash=np.array(self.data_hash))
            atomic_write_bytes(path, buf.getvalue())
        return feats32.astype(np.float64)
