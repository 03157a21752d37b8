"""Data: sources -> validated images -> manifest -> packed multi-resolution arrays.

Names are imported lazily so that preparation (and its worker processes) never pay for
importing torch, which only the training-side ``PackedDataset`` needs.
"""

from __future__ import annotations

from stylegan.shared import lazy_exports

_EXPORTS = {
    "PackedDataset": "stylegan.training.dataset",
    "array_path": "stylegan.training.dataset",
    "available_resolutions": "stylegan.training.dataset",
    "InputItem": "stylegan.data.sources",
    "fetch_package": "stylegan.data.sources",
    "list_inputs": "stylegan.data.sources",
    "verify_integrity": "stylegan.data.sources",
    "DecodePool": "stylegan.data.workers",
    "FrameResult": "stylegan.data.prepare",
    "PreparedWriter": "stylegan.data.prepare",
    "load_data_config": "stylegan.data.prepare",
    "prepare": "stylegan.data.prepare",
    "prepare_chunk": "stylegan.data.prepare",
    "split_chunks": "stylegan.data.prepare",
    "write_prepared": "stylegan.data.prepare",
}
__all__ = sorted(_EXPORTS)


__getattr__ = lazy_exports(__name__, _EXPORTS)
