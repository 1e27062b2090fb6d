"""JPEGs decoded on a GPU in batches: what the loading threads decode at the same time goes to
nvJPEG in one call.

torchvision decodes a list of JPEGs on CUDA in one batched nvJPEG call, which costs far less per
image than one call each when the images are small (dataset rows of 200-1000 px: one call's fixed
cost is then most of its time). The job's loading threads each decode one row, so `JpegBatcher`
puts their requests in one queue; a single thread takes everything queued whenever it is free
and decodes it as one batch. A thread alone waits for nothing: its JPEG goes out at once, as a
batch of one, and requests group only while the decoder is busy, so no row waits for others to
arrive. torchvision gives no partial results when one JPEG of a list fails, so a failed batch is
decoded again one JPEG at a time: the file nvJPEG refuses fails alone (`images.decode` then reads
it with Pillow) and the rest keep their pixels.

Which JPEGs come here is `codecs.is_plain_jpeg`'s rule (full-resolution chroma on a GPU: nvJPEG
upsamples subsampled chroma otherwise than the CPU's libjpeg-turbo). On the CPU a batch runs no
faster than its JPEGs one by one, so there the threads decode their own (`codecs.decode_jpeg`).
"""
from __future__ import annotations

import queue
import threading
from concurrent.futures import Future

import numpy as np
import torch

# Requests taken into one call at most: nvJPEG's batched decode holds every image of a batch on
# the device at once, and beyond a few dozen small images a batch costs no less per image.
MAX_BATCH = 64


class JpegBatcher:
    """Decodes JPEG bytes to (H, W, 3) uint8 RGB on `device`, from any number of threads, in
    batches of whatever is waiting. `calls` and `images` count the decode calls and the JPEGs
    they held (a batch retried one by one counts each retry)."""

    def __init__(self, device: torch.device | str, max_batch: int = MAX_BATCH):
        self.device = torch.device(device)
        self.max_batch = max_batch
        self.calls = self.images = 0
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name=f"jpeg-batcher-{self.device}", daemon=True)
        self._thread.start()

    def decode(self, data: bytes) -> np.ndarray:
        """The RGB pixels of one JPEG; raises RuntimeError where torchvision cannot decode it."""
        future: Future = Future()
        self._queue.put((torch.frombuffer(bytearray(data), dtype=torch.uint8), future))
        # The copy to the host runs here, on the caller's thread, so that the decoder goes on.
        return future.result().permute(1, 2, 0).contiguous().cpu().numpy()

    def _serve(self) -> None:
        while True:
            batch = [self._queue.get()]
            while len(batch) < self.max_batch:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            self._decode(batch)

    def _decode(self, batch: list[tuple[torch.Tensor, Future]]) -> None:
        try:
            images = self._call([encoded for encoded, _ in batch])
        except RuntimeError as e:
            if len(batch) == 1:
                batch[0][1].set_exception(e)
                return
            for item in batch:
                self._decode([item])
            return
        for (_, future), image in zip(batch, images):
            future.set_result(image)

    def _call(self, encoded: list[torch.Tensor]) -> list[torch.Tensor]:
        from torchvision.io import ImageReadMode, decode_jpeg

        self.calls += 1
        self.images += len(encoded)
        try:
            return decode_jpeg(encoded, mode=ImageReadMode.RGB, device=self.device)
        except Exception as e:  # noqa: BLE001 - torchvision raises RuntimeError, and others on odd input
            raise RuntimeError(str(e)) from e


_batchers: dict[torch.device, JpegBatcher] = {}
_lock = threading.Lock()


def batcher(device: torch.device | str) -> JpegBatcher:
    """The process's batcher for `device`, started on first use."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    with _lock:
        if device not in _batchers:
            _batchers[device] = JpegBatcher(device)
        return _batchers[device]
