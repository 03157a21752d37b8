"""The generator as an MLflow pyfunc model, defined by code (no pickle).

MLflow copies this file into the logged model and runs it on load; ``stylegan/`` travels with
the model as code_paths, and the weights are the pickle-free export (safetensors + JSON).

Input: a DataFrame with ``seed`` (int), and optionally ``truncation_psi`` (float, default 0.7),
``truncation_cutoff`` (int: truncate only the first N style layers, default 8 as the official
StyleGAN; a value above the generator's style layers truncates them all) and ``noise_mode``
(``const``/``random``/``none``, default ``const``), one row per image.
Output: a DataFrame with ``seed`` and ``image_png_base64`` (what serves well as JSON), or with
``params={"output": "array"}`` a uint8 array ``(N, H, W, 3)``.

Names: when the model was logged with a Pokédex (a second artifact, ``pokedex``: the classifier
of ``stylegan/pokedex``, safetensors + JSON), the DataFrame also has ``name`` (a portmanteau of
the two species the image most looks like) and ``looks_like``, a JSON string of the top three:
``[{"species_id": 25, "name": "Pikachu", "prob": 0.41}, ...]``, most likely first. The array output
is the same with or without one, and a model logged without a Pokédex answers as before.

Bounds: at most ``MAX_ROWS`` rows per request (more is an ``INVALID_PARAMETER_VALUE`` error, HTTP
400 when served, before anything is generated); images are generated ``CHUNK_ROWS`` at a time, so
a request holds at most ``CHUNK_ROWS`` float images besides its uint8 / PNG results.
"""

from __future__ import annotations

import base64
import io
import json

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.pyfunc import PythonModel

DEFAULT_PSI = 0.7
DEFAULT_NOISE_MODE = "const"
DEFAULT_CUTOFF = 8  # StyleGAN's truncation_cutoff: the coarse and middle layers
NOISE_MODES = ("const", "random", "none")
MAX_ROWS = 256  # rows (images) per request: split bigger jobs (256 PNGs at 256x256 are ~50 MB of uint8)
CHUNK_ROWS = 32  # images generated at a time (bounds the network's activations per request)


def _bad_request(message: str) -> MlflowException:
    # INVALID_PARAMETER_VALUE: the scoring server answers 400 with this message (a plain
    # exception would become a generic "unexpected error" with the message buried in a traceback).
    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)


def _png_base64(image: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


class GeneratorModel(PythonModel):
    def load_context(self, context):  # untyped on purpose: MLflow inspects hints
        from stylegan.checkpoint import load_generator

        self.G = load_generator(context.artifacts["generator"], device="cpu")
        self.pokedex = None  # names the images ("name", "looks_like") when the model was logged with one
        if "pokedex" in context.artifacts:
            from stylegan.pokedex import load_pokedex

            self.pokedex = load_pokedex(context.artifacts["pokedex"], device="cpu")

    def predict(self, context, model_input: pd.DataFrame, params=None):  # DataFrame: MLflow infers no schema from it
        from stylegan.sampling import generate

        df = pd.DataFrame(model_input)
        if len(df) > MAX_ROWS:
            raise _bad_request(f"request has {len(df):,} rows; at most {MAX_ROWS} images per request (MAX_ROWS): "
                               "split it into several requests")
        if "seed" not in df.columns:
            raise _bad_request(f"input needs a 'seed' column (got columns {list(df.columns)})")
        output = (params or {}).get("output", "png_base64")
        if output not in ("png_base64", "array"):
            raise _bad_request(f"param output must be 'png_base64' or 'array', got {output!r}")
        try:
            seeds = df["seed"].astype("int64").to_numpy()
        except (TypeError, ValueError, OverflowError):
            raise _bad_request("seed must be integers in [0, 2**32)") from None
        if len(seeds) and (seeds.min() < 0 or seeds.max() >= 2**32):
            raise _bad_request(f"seed must be in [0, 2**32), got {int(seeds.min())}..{int(seeds.max())}")
        psi = (df["truncation_psi"] if "truncation_psi" in df else pd.Series(DEFAULT_PSI, index=df.index))
        psi = psi.fillna(DEFAULT_PSI).astype("float64").to_numpy()
        if not ((psi >= 0.0) & (psi <= 1.0)).all():  # as `pokegan sample --psi`
            raise _bad_request(f"truncation_psi must be in [0, 1] (1 = no truncation), got {sorted(set(psi.tolist()))}")
        cutoff = df["truncation_cutoff"] if "truncation_cutoff" in df else pd.Series(DEFAULT_CUTOFF, index=df.index)
        cutoff = cutoff.fillna(DEFAULT_CUTOFF).astype("int64").to_numpy()
        if (cutoff < 0).any():
            bad_cutoffs = sorted(set(cutoff.tolist()))
            raise _bad_request(f"truncation_cutoff must be >= 0 (style layers truncated), got {bad_cutoffs}")
        modes = df["noise_mode"] if "noise_mode" in df else pd.Series(DEFAULT_NOISE_MODE, index=df.index)
        modes = modes.fillna(DEFAULT_NOISE_MODE).astype(str).to_numpy()
        bad = sorted(set(modes) - set(NOISE_MODES))
        if bad:
            raise _bad_request(f"noise_mode must be one of {list(NOISE_MODES)}, got {bad}")
        res = self.G.img_resolution
        images = np.zeros((len(df), res, res, 3), dtype=np.uint8)
        # One generate() call per distinct (psi, cutoff, noise_mode) and chunk; rows keep their order.
        for p, c, m in sorted({(float(p), int(c), str(m)) for p, c, m in zip(psi, cutoff, modes, strict=True)}):
            rows = np.flatnonzero((psi == p) & (cutoff == c) & (modes == m))
            for i in range(0, len(rows), CHUNK_ROWS):
                part = rows[i : i + CHUNK_ROWS]
                images[part] = generate(self.G, seeds=[int(s) for s in seeds[part]], truncation_psi=p,
                                        truncation_cutoff=c, noise_mode=m, batch_size=CHUNK_ROWS)
        if output == "array":
            return images
        out = pd.DataFrame({"seed": seeds, "image_png_base64": [_png_base64(img) for img in images]})
        pokedex = getattr(self, "pokedex", None)
        if pokedex is not None:
            from stylegan.pokedex.explain import explain

            named = [e.to_dict() for e in explain(pokedex, images)]
            out["name"] = [e["name"] for e in named]
            out["looks_like"] = [json.dumps(e["looks_like"]) for e in named]
        return out


mlflow.models.set_model(GeneratorModel())
