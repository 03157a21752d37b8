"""pokegan's library: StyleGAN (Karras et al. 2019) on Progressive GAN, data preparation and metrics.

Depends on torch, numpy, pillow and pandas only; orchestration lives in ``flows/``.
"""

__version__ = "0.1.0"
