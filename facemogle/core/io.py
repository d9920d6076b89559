"""Atomic file output and careful input: nothing half-written, errors that name the file.

Every model folder and checkpoint carries `manifest.json` (`write_manifest`), the SHA-256 and
size of each of its files, checked before its weights are loaded (`verify_manifest`):
safetensors validates a file's header, not its data, so a flipped byte inside a tensor would
otherwise load silently. A write that fails for want of space (a full disk, a quota, a file-size
limit) raises `WriteError` naming the output it was building, and leaves nothing of it.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError
from safetensors import SafetensorError

MANIFEST_FILE = "manifest.json"


class InputError(ValueError):
    """An input file is missing, unreadable or not what the stage expects."""


class WriteError(OSError):
    """An output could not be written for want of space (a full disk, a quota, a file-size
    limit); nothing of it was left behind."""


NO_SPACE = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)


def _no_space(err: BaseException) -> bool:
    if isinstance(err, OSError):
        return err.errno in NO_SPACE
    # safetensors' writer (Rust) reports the OS error in its message only: "... (os error 28)"
    return isinstance(err, SafetensorError) and any(f"(os error {code})" in str(err)
                                                     for code in NO_SPACE)


@contextlib.contextmanager
def write_errors_named(path: str | Path) -> Iterator[None]:
    """Re-raise a failed write for want of space as a `WriteError` naming `path` (what the
    writes inside were building)."""
    try:
        yield
    except Exception as err:
        if isinstance(err, WriteError) or not _no_space(err):
            raise
        raise WriteError(f"{path}: could not be written ({err}): the disk is full or a quota "
                         f"or file-size limit was reached; nothing of it was kept") from err


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling path; on success it replaces `path` (a file or a directory).
    A write that fails for want of space raises `WriteError` naming `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent)) / path.name
    try:
        with write_errors_named(path):
            yield tmp
            replace_path(tmp, path)
    finally:
        shutil.rmtree(tmp.parent, ignore_errors=True)


def replace_path(tmp: str | Path, path: str | Path) -> None:
    """Rename `tmp` to `path` (same file system), removing what `path` held (a file, a directory
    or a link) first and creating its parent folder."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
    path.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, path)


@contextlib.contextmanager
def shared_atomic_dir(path: str | Path, processes) -> Iterator[Path]:
    """`atomic_path` for a directory that several processes fill (`processes`: an accelerate
    `PartialState`): the main process makes a sibling `.name.partial` folder, every process
    writes into it, and after all have finished the main process moves it to `path`."""
    path = Path(path)
    tmp = path.parent / f".{path.name}.partial"
    if processes.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)  # left by an interrupted run
        tmp.mkdir(parents=True)
    processes.wait_for_everyone()
    try:
        with write_errors_named(path):
            yield tmp
            processes.wait_for_everyone()
            if processes.is_main_process:
                replace_path(tmp, path)
    finally:
        if processes.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)


def write_text(path: str | Path, text: str) -> None:
    """Write `text` to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | Path, obj: Any) -> None:
    """Write `obj` as indented JSON to `path` atomically."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_jsonl(path: str | Path, rows: list[dict]) -> None:
    """Write one JSON object per line to `path` atomically."""
    write_text(path, "".join(json.dumps(r, sort_keys=False) + "\n" for r in rows))


def read_json(path: str | Path, *, missing: str = "not found") -> Any:
    """A JSON file's value; a missing file (`missing` says what to do) or invalid JSON is an
    `InputError` naming the file."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise InputError(f"{path}: {missing}") from None
    except json.JSONDecodeError as err:
        raise InputError(f"{path}: not valid JSON ({err.msg})") from None


def read_jsonl(path: str | Path) -> list[dict]:
    """Read a JSON-lines file; a malformed line is an `InputError` naming file and line."""
    rows = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise InputError(f"{path}:{n}: not valid JSON ({err.msg})") from None
    return rows


def open_image(path: str | Path) -> Image.Image:
    """Open and fully decode an image; a missing or corrupt file is an `InputError` naming it."""
    try:
        with Image.open(path) as im:
            im.load()
            return im.copy() if im.mode == "P" else im.copy()
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise InputError(f"{path}: unreadable or corrupt image ({err})") from None


def read_rgb(path: str | Path) -> np.ndarray:
    """Read an image as an (H, W, 3) uint8 RGB array."""
    return np.asarray(open_image(path).convert("RGB"))


def save_png(path: str | Path, image: Image.Image | np.ndarray) -> None:
    """Save a PNG atomically."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(folder: str | Path) -> Path:
    """Write `folder/manifest.json`: {"sha256": {path: hex digest}, "bytes": {path: size}} of
    every file under `folder` (paths relative to it, subfolders included) but the manifest."""
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p != folder / MANIFEST_FILE)
    names = [p.relative_to(folder).as_posix() for p in files]
    write_json(folder / MANIFEST_FILE, {
        "sha256": {name: file_sha256(p) for name, p in zip(names, files)},
        "bytes": {name: p.stat().st_size for name, p in zip(names, files)}})
    return folder / MANIFEST_FILE


def verify_manifest(folder: str | Path, *, required: bool = True) -> bool:
    """Check every file `folder/manifest.json` lists against its size and SHA-256; a missing,
    truncated or changed file is an `InputError` naming it, what was expected and what was
    found. Files the manifest does not list (a run's `checkpoints/` beside its model files) are
    not checked. Without a manifest: an `InputError` if `required`, else False."""
    folder = Path(folder)
    path = folder / MANIFEST_FILE
    if not path.is_file():
        if required:
            raise InputError(
                f"{path}: missing; model folders and checkpoints are written with a SHA-256 "
                f"manifest of their files, so {folder} is incomplete or older than manifests; "
                f"write it again, or if you trust its files add one with "
                f"facemogle.core.io.write_manifest")
        return False
    manifest = read_json(path)
    hashes = manifest.get("sha256") if isinstance(manifest, dict) else None
    sizes = manifest.get("bytes", {}) if isinstance(manifest, dict) else None
    if not isinstance(hashes, dict) or not isinstance(sizes, dict):
        raise InputError(f"{path}: not a manifest (expected {{'sha256': {{file: hex digest}}}})")
    remedy = "restore it from a copy, or write the folder again (retrain)"
    for name, expected in hashes.items():
        file = folder / name
        if not file.is_file():
            raise InputError(f"{file}: missing (listed in {path}); {remedy}")
        size = file.stat().st_size
        if name in sizes and size != sizes[name]:
            raise InputError(f"{file}: unexpected size, {size} bytes where {path} records "
                             f"{sizes[name]}; the file is truncated or replaced: {remedy}")
        found = file_sha256(file)
        if found != expected:
            raise InputError(f"{file}: sha256 {found}, expected {expected} (recorded in {path}); "
                             f"the file is damaged or was changed after it was written: {remedy}")
    return True


def load_safetensors(path: str | Path) -> dict:
    """The tensors of a safetensors file, on CPU; a missing file or one whose header or length
    safetensors refuses (truncated, not safetensors) is an `InputError` naming it."""
    from safetensors.torch import load_file  # torch is imported only where tensors are read

    try:
        return load_file(str(path))
    except FileNotFoundError:
        raise InputError(f"{path}: file not found (expected a safetensors file)") from None
    except SafetensorError as err:
        raise InputError(f"{path}: not a readable safetensors file ({err}); expected the "
                         f"tensors this repository writes, the file is truncated or corrupt"
                         ) from None
