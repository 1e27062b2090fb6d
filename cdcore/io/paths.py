"""Where an untrusted name may send a write: the rule that keeps outputs under their prefix.

Object keys may hold any bytes, and the people who fill a bucket are often not the people who
stylize it. An output path built from a key or a file name (dataset mode mirrors the contents'
tree; manifest rows without an output take the content's name) is used only when every
"/"-separated segment is an ordinary name. Refused, never resolved:

- ".." and "." segments: joined to a local prefix they climb out of it; several S3-compatible
  stores resolve them in keys too. Resolving them instead would still write a file other than
  the one the key names, or two keys onto one output.
- empty segments ("a//b", a leading or trailing "/"): POSIX collapses them, so two keys would
  share an output, and some stores drop them.
- backslashes: a separator to Windows, to several stores and to tools that sync buckets to disk.
- control characters (newlines, escapes, NUL): they hide in logs and break line-based tools.

Local output folders are also checked where the write happens (`escape`): a symlink below the
output prefix that leads out of it is refused, not followed.
"""
from __future__ import annotations

import os
import re

_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")  # Unicode's control characters (category Cc)
_BAD_SEGMENT = re.compile(r"(?:^|/)(\.{0,2})(?:/|$)")  # "", "." or ".." between slashes or ends


class UnsafePath(ValueError):
    """A path that would write outside its prefix; the message names it and the reason."""


def problem(relative: str) -> str | None:
    """Why `relative` (a "/"-separated path below a prefix) is unsafe to write, else None."""
    if relative == "":
        return "it is empty"
    if "\\" in relative:
        return "it holds a backslash"
    control = _CONTROL.search(relative)
    if control:
        return f"it holds the control character {control.group()!r}"
    return segment_problem(relative)


def segment_problem(relative: str) -> str | None:
    """The part of the rule about segments alone: what S3-compatible stores resolve or drop."""
    segment = _BAD_SEGMENT.search(relative)
    if segment:
        return f"it has a {segment.group(1)!r} segment" if segment.group(1) else "it has an empty segment"
    return None


def refusal(relative: str, what: str) -> str | None:
    """Why `relative`, which is `what` ("s3://b/in/x.jpg: output path"), is refused, in words for
    the results table; None when it is safe."""
    why = problem(relative)
    if why is None:
        return None
    return f"{what} {relative!r} is refused: {why} (outputs stay under the output prefix; such paths are " \
           "refused, never resolved)"


def s3_key_problem(uri: str) -> str | None:
    """Why the key of an s3:// URI is unsafe to write, else None (not S3: None). One trailing "/"
    is allowed, so that a prefix may be given as "s3://bucket/out/", and so is no key at all (the
    bucket itself as a prefix)."""
    if not uri.startswith("s3://"):
        return None
    key = uri[len("s3://"):].partition("/")[2]
    key = key[:-1] if key.endswith("/") else key
    return problem(key) if key else None


def escape(root: str, path: str) -> str | None:
    """Why writing the local file `path` would leave the local folder `root` through a symlink,
    else None; None too for a `path` that is not below `root` by name (an output the manifest
    chose explicitly: the rule is for names derived under the prefix).

    Symlinks are resolved only to be judged: `path`'s folder, resolved, must lie in `root`,
    resolved, and `path` itself must not be a symlink (a skip check or an overwrite would go
    through it). This is a check before writing, not a lock: a process that swaps a folder for a
    symlink while the job writes could still race it, so an output folder others may write to
    needs the file system's own permissions too.
    """
    root, path = os.path.abspath(root), os.path.abspath(path)
    if os.path.commonpath([root, path]) != root or path == root:
        return None
    real_root, real_folder = os.path.realpath(root), os.path.realpath(os.path.dirname(path))
    if os.path.commonpath([real_root, real_folder]) != real_root:
        return f"its folder leads out of {root} through a symlink (to {real_folder})"
    if os.path.islink(path):
        return f"it is a symlink (to {os.readlink(path)}): outputs are not written through links"
    return None
