"""Writes that never leave a half-written file behind, and reads that never run code."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write to a temporary file in the same directory, flush, fsync, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would make results private
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def settings_key(settings: dict) -> str:
    """A short stable hash of JSON-able settings: the name of a cached run."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]


# ---------------------------------------------------------------------- safe reading
# Everything this project loads is safetensors or JSON: neither can run code. Files of
# another kind get an error that says what they look like and what to do instead.

MANIFEST = "manifest.json"
_PICKLE_HINT = (
    "ddn-policy never unpickles: re-save the weights as safetensors "
    "(safetensors.torch.save_file) in a trusted environment"
)


class UnsafeFileError(ValueError):
    """A file that is not what a ddn-policy checkpoint holds, or that was changed."""


def read_safetensors(path: str | Path) -> dict:
    """Tensors from a safetensors file; pickles, zip archives (torch.save) and torn or
    edited files are refused by name."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    try:  # safetensors parses a JSON header and raw bytes: nothing in it can run
        return load_file(str(path))
    except (SafetensorError, OSError) as err:
        head = path.read_bytes()[:2]
        if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
            kind = "a Python pickle"
        elif head == b"PK":
            kind = "a zip archive (torch.save)"
        else:
            raise UnsafeFileError(
                f"{path} is not a readable safetensors file ({err}); it is torn or was "
                "edited: use an earlier checkpoint or re-export the weights"
            ) from err
        raise UnsafeFileError(f"{path} is {kind}, not safetensors; {_PICKLE_HINT}") from err


def read_json(path: str | Path) -> dict:
    path = Path(path)
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UnsafeFileError(f"{path} is not valid JSON ({err})") from err
    if not isinstance(value, dict):
        raise UnsafeFileError(f"{path} must hold a JSON object, got {type(value).__name__}")
    return value


def file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def directory_digests(root: str | Path) -> dict[str, str]:
    """{relative path: sha256} of every file under root except the manifest itself."""
    root = Path(root)
    return {
        p.relative_to(root).as_posix(): file_sha256(p)
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }


def verify_digests(root: str | Path, expected: dict[str, str], what: str = "manifest") -> None:
    """Refuse a directory whose files differ from the digests recorded when it was written."""
    root = Path(root)
    for rel, digest in expected.items():
        path = root / rel
        if not path.is_file():
            raise UnsafeFileError(f"{path} is listed in the {what} but missing")
        if file_sha256(path) != digest:
            raise UnsafeFileError(
                f"{path} changed after it was written (sha256 differs from the {what}); "
                "refusing to load it: use an untouched copy or an earlier checkpoint"
            )
