"""Images too large to hold in memory: read by window, written by strips, through libvips.

The in-memory path (`images`, Pillow) holds the compressed file, the decoded (H, W, 3) image and
the (H, W, 4) result at once, about 7 bytes per pixel: 7 GB at a gigapixel. Here the image never
exists whole in memory:

- `reading.RegionReader` is the content as an (H, W, 3) uint8 `ImageBuffer` for the tiled engine. libvips
  decodes the file top to bottom (JPEG and PNG cannot be decoded any other way without decoding
  all rows above), a strip at a time and only as far down as the windows asked for reach, into a
  raw spool file from which windows are read back with pread; EXIF orientation is applied per
  window.
- `--content-size` resizes the content band by band into another raw file, and a stroke scale's
  downscaled content and upsampled coarse result are raw files too (`tiling.resample`): both give
  the pixels the in-memory path gives.
- The engine writes its 8-bit result into a raw file (`ImageBuffer.on_disk`), and `writing.save` feeds
  it to a libvips encoder strip by strip, as an uncompressed PNG stream, so the encoder (JPEG, PNG,
  tiled pyramidal TIFF, WebP, DeepZoom) holds a few strips, never the image.
- `scratch.Scratch` is the temporary directory of one run: its free space is checked against what the run
  will write before anything is written, and it goes afterwards, also on failure. Where the disk
  is short, the stages whose stored features take the most room for the least work encode them
  again instead (`tiling.planning.stages_to_recompute`; same result, a few % more time). Objects
  on S3 are downloaded into it (in parallel ranged parts) and results uploaded from it (in parts).

`headers.streams` says which path a `Stylist.stylize_file` call takes: this one for wct and adain on 8-bit
grey or RGB images (with or without alpha) read or written above STREAM_PIXELS, and for DeepZoom
output; Pillow's for the rest (small images, CMYK, 16-bit, float, and gatys, which optimizes the
whole image at once). Both decode and encode with libjpeg-turbo, zlib and libwebp, so a JPEG or PNG
read either way gives the same pixels.

    headers   what a file says before any pixel is decoded (`probe`, `peek`), and `streams`
    reading   `RegionReader`: the content by window, decoded into a spool a strip at a time
    writing   `save`: a buffer encoded strip by strip, written atomically, locally or to S3
    scratch   `Scratch`: the run's temporary directory, its space checked first
    flow      `stylize_file`: the whole streamed run of one file, given the models and a prepared style
"""
from .flow import check_request, stylize_file
from .headers import HEAD_BYTES, peek, probe, streams

__all__ = ["HEAD_BYTES", "check_request", "peek", "probe", "streams", "stylize_file"]
