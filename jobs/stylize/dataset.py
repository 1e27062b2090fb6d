"""Dataset mode: folders or prefixes of contents and styles, expanded into a manifest.

Every content gets `num_styles` distinct styles, chosen by `StyleRing`: consistent hashing of the
content's path relative to `--contents`, the seed and the pick number onto a ring of the styles'
points. The same seed gives the same pairs on every run whatever the listing order; adding
contents changes no existing pair, and adding a style moves only the picks that now land on its
arcs (about num_styles / styles of them), instead of reshuffling every pair as `hash % styles`
would. Outputs mirror the contents' tree under the output prefix, so a loader that read the
original set (ImageFolder and the like) reads the stylized one the same way. A content whose
output path would not stay under the prefix (cdcore.io.paths: "..", ".", empty segments,
backslashes, control characters) keeps its row, refused, with the reason in `refused`.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from cdcore.io import images, paths, storage

DEFAULT_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "tif", "tiff", "bmp")
DEFAULT_NAME = "{stem}+{style}{ext}"
NAME_FIELDS = ("stem", "style", "ext", "k")
POINTS_PER_STYLE = 64  # more points even out the styles' shares of the ring
CHUNK = 65_536  # contents expanded per Arrow batch, so a million of them never sit in Python lists


class DatasetError(ValueError):
    """The dataset cannot be expanded; the message names the URI or option and the reason."""


@dataclass(frozen=True)
class Dataset:
    contents: str
    styles: str
    output_prefix: str
    num_styles: int = 1
    seed: int = 0
    extensions: tuple[str, ...] = DEFAULT_EXTENSIONS
    name: str = DEFAULT_NAME  # output file name, from NAME_FIELDS


def _hash64(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


def relative(uri: str, prefix: str) -> str:
    """The part of a listed `uri` below `prefix`, "/"-separated."""
    if storage.is_local(prefix) and not prefix.startswith("file://"):
        return os.path.relpath(uri, prefix).replace(os.sep, "/")
    return uri[len(prefix.rstrip("/")) + 1:]


def list_images(prefix: str, extensions: tuple[str, ...], role: str) -> list[str]:
    """The images under `prefix` (recursive, extensions ignoring case), as paths relative to it."""
    try:
        uris = storage.list_files(prefix, extensions)
    except storage.StorageError as e:
        raise DatasetError(f"--{role}: {e}") from None
    if not uris:
        where = "no such directory" if storage.is_local(prefix) and not storage.local_path(prefix).is_dir() \
            else f"no {', '.join(extensions)} files there"
        raise DatasetError(f"--{role} {prefix}: lists no images ({where})")
    return [relative(uri, prefix) for uri in uris]


class StyleRing:
    """Consistent hashing of contents onto styles: each style owns POINTS_PER_STYLE points of a
    64-bit ring; a pick lands on the first style point at or after its own hash."""

    def __init__(self, styles: list[str]):
        self.styles = sorted(styles)  # the ring does not depend on the listing order
        keys = [_hash64(f"{style}\0{i}") for style in self.styles for i in range(POINTS_PER_STYLE)]
        order = np.argsort(np.array(keys, dtype=np.uint64), kind="stable")
        self.points = np.array(keys, dtype=np.uint64)[order]
        self.owners = (np.arange(len(keys)) // POINTS_PER_STYLE)[order]

    def pick(self, content: str, seed: int, count: int) -> list[str]:
        """`count` distinct styles for `content` (a relative path); pick k tries hashes of
        (seed, content, k, attempt) until it lands on a style not picked yet."""
        if count > len(self.styles):
            raise DatasetError(f"--num-styles {count} is more than the {len(self.styles)} styles")
        picked: list[int] = []
        for k in range(count):
            attempt = 0
            while True:
                h = np.uint64(_hash64(f"{seed}\0{content}\0{k}\0{attempt}"))
                owner = int(self.owners[np.searchsorted(self.points, h) % len(self.points)])
                if owner not in picked:
                    picked.append(owner)
                    break
                attempt += 1
        return [self.styles[i] for i in picked]


def output_name(template: str, content: str, style: str, k: int) -> str:
    """The output's path relative to the output prefix: the content's folder, then `template`."""
    folder, _, file = content.rpartition("/")
    stem, ext = os.path.splitext(file)
    if ext.lower() not in images.FORMATS:  # keep the content's format where we can write it
        ext = ".png"
    style_stem = os.path.splitext(style.rpartition("/")[2])[0]
    name = template.format(stem=stem, style=style_stem, ext=ext, k=k)
    return f"{folder}/{name}" if folder else name


def check_name(template: str, num_styles: int) -> None:
    try:
        template.format(stem="s", style="t", ext=".png", k=0)
    except (KeyError, IndexError, ValueError) as e:
        raise DatasetError(f"--output-name {template!r}: fields are {', '.join(NAME_FIELDS)} ({e})") from None
    if num_styles > 1 and "{style}" not in template and "{k}" not in template:
        raise DatasetError(f"--output-name {template!r} gives one name for {num_styles} styles: "
                           "add {style} or {k}")
    why = paths.problem(template.format(stem="s", style="t", ext=".png", k=0))
    if why is not None:
        raise DatasetError(f"--output-name {template!r}: {why} (names stay under --output-prefix)")
    images.output_format(template.format(stem="s", style="t", ext=".png", k=0))


def expand(dataset: Dataset) -> pa.Table:
    """The manifest of a dataset: content, style, output per (content, pick), in content order;
    `refused` says why a row's output path is unsafe (its output is then null), else null."""
    check_name(dataset.name, dataset.num_styles)
    if dataset.num_styles < 1:
        raise DatasetError(f"--num-styles must be at least 1 (got {dataset.num_styles})")
    contents = list_images(dataset.contents, dataset.extensions, "contents")
    ring = StyleRing(list_images(dataset.styles, dataset.extensions, "styles"))
    ring.pick(contents[0], dataset.seed, dataset.num_styles)  # N > styles fails here, before the loop
    content_base, style_base, output_base = (_base(p) for p in (dataset.contents, dataset.styles,
                                                                  dataset.output_prefix))
    batches = []
    for start in range(0, len(contents), CHUNK):
        columns = {"content": [], "style": [], "output": [], "refused": []}
        for content in contents[start: start + CHUNK]:
            for k, style in enumerate(ring.pick(content, dataset.seed, dataset.num_styles)):
                name = output_name(dataset.name, content, style, k)
                where = f"{content_base + content!r}: "  # its own path first: output_name drops empty folders
                refused = paths.refusal(content, where + "path below --contents") or \
                    paths.refusal(name, where + "output path")
                columns["content"].append(content_base + content)
                columns["style"].append(style_base + style)
                columns["output"].append(None if refused else output_base + name)
                columns["refused"].append(refused)
        batches.append(pa.record_batch({c: pa.array(values, pa.string()) for c, values in columns.items()}))
    return pa.Table.from_batches(batches)


def _base(prefix: str) -> str:
    """`prefix` ready to take a relative path: what storage.join(prefix, rel) gives, without its
    per-call cost over a million rows."""
    return storage.join(prefix, "x")[:-1]
