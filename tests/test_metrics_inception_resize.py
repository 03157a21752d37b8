"""The FID preprocessing follows the reference (TF1 graph) protocol: TF1 bilinear resize, (x - 128) / 128.

Reference values: TensorFlow's own ``image_ops_test.py`` (``ResizeMethodV1.BILINEAR``,
``align_corners=False``) and TensorFlow.js's ``resize_bilinear_test.ts`` ("matches tensorflow
w/ random numbers alignCorners=false"), plus an independent NumPy transcription of TF1's
``resize_bilinear_op.cc`` (``compute_interpolation_weights`` with the legacy scaler, then
``compute_lerp``) for the 32 -> 299 and 256 -> 299 sizes the project measures at.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from stylegan.metrics.inception import INPUT_SIZE, preprocess, tf1_resize_bilinear


def _tf1_numpy(img: np.ndarray, out_h: int, out_w: int, rows: range | None = None) -> np.ndarray:
    """A line-by-line port of TF1's CPU kernel (NHWC, float32 throughout, as the C++ is)."""
    f32 = np.float32
    n, in_h, in_w, c = img.shape

    def interpolation(in_size: int, out_size: int) -> list[tuple[int, int, np.float32]]:
        scale = f32(in_size) / f32(out_size)  # CalculateResizeScale(align_corners=false)
        weights = []
        for i in range(out_size):
            src = f32(f32(i) * scale)  # LegacyScaler: no half-pixel offset
            src_f = f32(np.floor(src))
            weights.append((max(int(src_f), 0), min(int(np.ceil(src)), in_size - 1), f32(src - src_f)))
        return weights

    ys, xs = interpolation(in_h, out_h), interpolation(in_w, out_w)
    rows = rows if rows is not None else range(out_h)
    out = np.zeros((n, len(rows), out_w, c), np.float32)
    img = img.astype(np.float32)
    for b in range(n):
        for y, (ylo, yhi, ylerp) in enumerate(ys[r] for r in rows):
            for x, (xlo, xhi, xlerp) in enumerate(xs):
                tl, tr, bl, br = img[b, ylo, xlo], img[b, ylo, xhi], img[b, yhi, xlo], img[b, yhi, xhi]
                top = tl + (tr - tl) * xlerp
                bottom = bl + (br - bl) * xlerp
                out[b, y, x] = top + (bottom - top) * ylerp
    return out


def _resize_nhwc(img: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    x = torch.from_numpy(np.ascontiguousarray(img.transpose(0, 3, 1, 2))).float()
    return tf1_resize_bilinear(x, (out_h, out_w)).numpy().transpose(0, 2, 3, 1)


def test_matches_tensorflow_image_ops_test_reference() -> None:
    # tensorflow/python/ops/image_ops_test.py, ResizeImagesV1 (upsampling 3x2 -> 6x4, BILINEAR).
    img = np.array([64, 32, 32, 64, 50, 100], np.float32).reshape(1, 3, 2, 1)
    expected = np.array([64.0, 48.0, 32.0, 32.0, 48.0, 48.0, 48.0, 48.0, 32.0, 48.0, 64.0, 64.0,
                         41.0, 61.5, 82.0, 82.0, 50.0, 75.0, 100.0, 100.0, 50.0, 75.0, 100.0, 100.0])
    np.testing.assert_allclose(_resize_nhwc(img, 6, 4).ravel(), expected, atol=1e-5)


def test_matches_tensorflow_js_random_reference() -> None:
    # tfjs-core/src/ops/resize_bilinear_test.ts: a (2, 3, 2) tensor resized to (4, 5) by TF.
    img = np.array([1.19074044, 0.91373104, 2.01611669, -0.52270832, 0.38725395, 1.30809779,
                    0.61835143, 3.49600659, 2.09230986, 0.56473997, 0.03823943, 1.19864896],
                   np.float32).reshape(1, 2, 3, 2)
    expected = np.array([
        1.19074047, 0.91373104, 1.68596613, 0.05186744, 1.69034398, -0.15654698,
        0.7130264, 0.94193673, 0.38725394, 1.30809784, 0.9045459, 2.20486879,
        1.59434628, 0.89455694, 1.68591988, 0.26748738, 0.58103991, 1.00690198,
        0.21274668, 1.25337338, 0.6183514, 3.49600649, 1.50272655, 1.73724651,
        1.68149579, 0.69152176, 0.44905344, 1.07186723, 0.03823943, 1.19864893,
        0.6183514, 3.49600649, 1.50272655, 1.73724651, 1.68149579, 0.69152176,
        0.44905344, 1.07186723, 0.03823943, 1.19864893])
    np.testing.assert_allclose(_resize_nhwc(img, 4, 5).ravel(), expected, atol=1e-6)
    # The simple case of the same file: [[2, 2], [4, 4]] -> 3x3.
    simple = np.array([2, 2, 4, 4], np.float32).reshape(1, 2, 2, 1)
    np.testing.assert_allclose(_resize_nhwc(simple, 3, 3).ravel(), [2, 2, 2, 10 / 3, 10 / 3, 10 / 3, 4, 4, 4],
                               atol=1e-6)


def test_matches_numpy_transcription_at_fid_sizes() -> None:
    rng = np.random.RandomState(0)
    # Rows spread over the whole output (every output row is computed by the same code path).
    for size, rows in ((32, range(0, INPUT_SIZE, 4)), (7, range(1, INPUT_SIZE, 13)), (256, range(2, INPUT_SIZE, 29))):
        img = rng.randint(0, 256, (1, size, size, 3)).astype(np.float32)
        got = _resize_nhwc(img, INPUT_SIZE, INPUT_SIZE)[:, list(rows)]
        np.testing.assert_allclose(got, _tf1_numpy(img, INPUT_SIZE, INPUT_SIZE, rows), rtol=0, atol=2e-5)


def test_differs_from_half_pixel_interpolate() -> None:
    # The point of the exercise: torch's bilinear (half-pixel centres) is a different resize.
    img = torch.from_numpy(np.random.RandomState(1).randint(0, 256, (1, 3, 32, 32)).astype(np.float32))
    ours = tf1_resize_bilinear(img, (INPUT_SIZE, INPUT_SIZE))
    torch_ = F.interpolate(img, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
    assert (ours - torch_).abs().max() > 5.0
    # Legacy TF1 sampling starts exactly on the first source pixel and repeats the last one.
    assert torch.equal(ours[..., 0, 0], img[..., 0, 0])
    assert torch.equal(ours[..., -1, -1], img[..., -1, -1])


def test_preprocess_scales_like_the_fid_graph() -> None:
    imgs = torch.tensor([0, 128, 255], dtype=torch.uint8).view(1, 3, 1, 1).expand(1, 3, 4, 4).contiguous()
    x = preprocess(imgs)
    assert x.shape == (1, 3, INPUT_SIZE, INPUT_SIZE)
    np.testing.assert_allclose(x[0, :, 0, 0].numpy(), [-1.0, 0.0, 127 / 128], atol=1e-7)
