"""Data: sources -> validated images -> manifest -> packed multi-resolution arrays."""

from stylegan.data.dataset import PackedDataset, array_path, available_resolutions

__all__ = ["PackedDataset", "array_path", "available_resolutions"]
