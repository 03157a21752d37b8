"""The code that decides what a training run computes, and nothing else.

The networks (``layers``, ``networks``, ``projected`` with its frozen ``effnet`` features), the
losses and augmentation, the schedule, the trainer and its state, real batches, multi-process
training and fine-tuning. It is one folder on purpose: ``dvc.yaml``'s train stage depends on it
as one dep, and the run key hashes its sources (``stylegan.checkpoint.code_fingerprint``), so
editing any of it retrains instead of resuming checkpoints that older code wrote.

Names are imported lazily: ``stylegan.training.networks`` loads the model without the trainer.
"""

from __future__ import annotations

from stylegan.shared import lazy_exports

_EXPORTS = {
    "Trainer": "stylegan.training.trainer",
    "StageResult": "stylegan.shared",
    "TrainerCallback": "stylegan.shared",
    "resolve_device": "stylegan.training.device",
}
__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
