"""cdcore: Collaborative Distillation style transfer at any resolution. Nothing here imports ray.

The packages are the layers, each importing only from those before it in this list (but for one
lazy import: `io.images` resizes with tiling's band-wise Lanczos, so both paths give the same pixels):

    options, timings, results  option checks (`Recipe`), phase timings, what a stylization
                               returns and raises (`Stylized`, `StylizeError`)
    memory, statusline         allocator settings, a terminal's progress line
    io/                        bytes and pictures: storage (local, S3), codecs, images, scratch dirs
    models/                    the width tables, encoders and decoders, model files and sets, precision
    transfer/                  the methods on whole images: WCT/AdaIN maps, the cascade, Gatys, quality
    tiling/                    the exact tiled engine: the same results in bounded memory
    streaming/                 images too large to hold: read by window, written by strips
    training/                  collaborative distillation: losses, pruning, the crop stream
    batching                   how many images of one size run as one batch
    pipeline, cli              `Stylist` (read, stylize, write), the command

    from cdcore import Recipe, Stylist
"""
__version__ = "0.1.0"

_EXPORTS = {"Stylist": "cdcore.pipeline", "StylizeError": "cdcore.results", "Stylized": "cdcore.results",
            "Recipe": "cdcore.options"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    # Imported on first use: `import cdcore.io.storage` must not pull in torch with the pipeline.
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'cdcore' has no attribute {name!r}")
