"""cdcore: Collaborative Distillation style transfer at any resolution.

Pure math lives in `nets` and `transforms`; I/O in `images`, `storage` and `modelset`; `stylize`
composes them. Nothing here imports ray.
"""
__version__ = "0.1.0"
