"""The generator as an MLflow pyfunc model, defined by code (no pickle).

MLflow copies this file into the logged model and runs it on load; ``stylegan/`` travels with
the model as code_paths, and the weights are the pickle-free export (safetensors + JSON).

Input: a DataFrame with ``seed`` (int), and optionally ``truncation_psi`` (float, default 0.7),
``truncation_cutoff`` (int: truncate only the first N style layers, default 8 as the official
StyleGAN; a value above the generator's style layers truncates them all) and ``noise_mode``
(``const``/``random``/``none``, default ``const``), one row per image.
Output: a DataFrame with ``seed`` and ``image_png_base64`` (what serves well as JSON), or with
``params={"output": "array"}`` a uint8 array ``(N, H, W, 3)``.
"""

from __future__ import annotations

import base64
import io

import mlflow
import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel

DEFAULT_PSI = 0.7
DEFAULT_NOISE_MODE = "const"
DEFAULT_CUTOFF = 8  # StyleGAN's truncation_cutoff: the coarse and middle layers
NOISE_MODES = ("const", "random", "none")


def _png_base64(image: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


class GeneratorModel(PythonModel):
    def load_context(self, context):  # untyped on purpose: MLflow inspects hints
        from stylegan.checkpoint import load_generator

        self.G = load_generator(context.artifacts["generator"], device="cpu")

    def predict(self, context, model_input: pd.DataFrame, params=None):  # DataFrame: MLflow infers no schema from it
        from stylegan.sampling import generate

        df = pd.DataFrame(model_input)
        if "seed" not in df.columns:
            raise ValueError(f"input needs a 'seed' column (got columns {list(df.columns)})")
        output = (params or {}).get("output", "png_base64")
        if output not in ("png_base64", "array"):
            raise ValueError(f"param output must be 'png_base64' or 'array', got {output!r}")
        seeds = df["seed"].astype("int64").to_numpy()
        psi = (df["truncation_psi"] if "truncation_psi" in df else pd.Series(DEFAULT_PSI, index=df.index))
        psi = psi.fillna(DEFAULT_PSI).astype("float64").to_numpy()
        if not ((psi >= 0.0) & (psi <= 1.0)).all():  # as `pokegan sample --psi`
            raise ValueError(f"truncation_psi must be in [0, 1] (1 = no truncation), got {sorted(set(psi.tolist()))}")
        cutoff = df["truncation_cutoff"] if "truncation_cutoff" in df else pd.Series(DEFAULT_CUTOFF, index=df.index)
        cutoff = cutoff.fillna(DEFAULT_CUTOFF).astype("int64").to_numpy()
        if (cutoff < 0).any():
            bad_cutoffs = sorted(set(cutoff.tolist()))
            raise ValueError(f"truncation_cutoff must be >= 0 (style layers truncated), got {bad_cutoffs}")
        modes = df["noise_mode"] if "noise_mode" in df else pd.Series(DEFAULT_NOISE_MODE, index=df.index)
        modes = modes.fillna(DEFAULT_NOISE_MODE).astype(str).to_numpy()
        bad = sorted(set(modes) - set(NOISE_MODES))
        if bad:
            raise ValueError(f"noise_mode must be one of {list(NOISE_MODES)}, got {bad}")
        res = self.G.img_resolution
        images = np.zeros((len(df), res, res, 3), dtype=np.uint8)
        # One generate() call per distinct (psi, cutoff, noise_mode); rows keep their order.
        for p, c, m in sorted({(float(p), int(c), str(m)) for p, c, m in zip(psi, cutoff, modes, strict=True)}):
            rows = np.flatnonzero((psi == p) & (cutoff == c) & (modes == m))
            images[rows] = generate(self.G, seeds=[int(s) for s in seeds[rows]], truncation_psi=p,
                                    truncation_cutoff=c, noise_mode=m)
        if output == "array":
            return images
        return pd.DataFrame({"seed": seeds, "image_png_base64": [_png_base64(img) for img in images]})


mlflow.models.set_model(GeneratorModel())
