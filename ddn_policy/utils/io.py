"""Writes that never leave a half-written file behind, and reads that never run code."""

from __future__ import annotations

import contextlib
import fcntl
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


def refit_once(out: Path, model_dir: Path, fit) -> Path:
    """A prior refit kept on disk and done once: unless model_dir holds a complete model,
    `fit()` returns (the refitted model, its per-layer report); the report goes to
    out/refit_report.json, then the model to model_dir (its manifest last, so a complete
    model_dir means a finished refit). Returns out."""
    if not (Path(model_dir) / MANIFEST).is_file():
        model, report = fit()
        atomic_write_text(Path(out) / "refit_report.json", json.dumps(report, indent=2))
        model.save_pretrained(model_dir)
    return Path(out)


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


# ---------------------------------------------------------------------- model directories
CONFIG_FILE = "config.json"


def write_model_dir(directory: str | Path, config: dict, tensor_files: dict[str, dict]) -> None:
    """config.json, one `<name>.safetensors` per entry of tensor_files, then a manifest
    of their sha256 (written last, so a directory with a manifest is complete)."""
    from safetensors.torch import save

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    atomic_write_text(d / CONFIG_FILE, json.dumps(config, indent=2))
    names = [CONFIG_FILE]
    for name, tensors in tensor_files.items():
        names.append(f"{name}.safetensors")
        flat = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        atomic_write_bytes(d / names[-1], save(flat))
    digests = {f: v for f, v in directory_digests(d).items() if f in names}
    atomic_write_text(d / MANIFEST, json.dumps(digests, indent=2))


def read_model_dir(directory: str | Path, names: tuple[str, ...], what: str) -> tuple[dict, dict]:
    """(config, {name: tensors}) of a directory written by write_model_dir, checked
    against its manifest when it has one (a hand-assembled directory has none)."""
    d = Path(directory)
    files = [CONFIG_FILE, *(f"{n}.safetensors" for n in names)]
    missing = [f for f in files if not (d / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{d} is not a saved {what}: missing {', '.join(missing)}")
    if (d / MANIFEST).is_file():
        verify_digests(d, read_json(d / MANIFEST), what=str(d / MANIFEST))
    return read_json(d / CONFIG_FILE), {n: read_safetensors(d / f"{n}.safetensors") for n in names}


def load_weights(module, tensors: dict, source: str | Path) -> None:
    """load_state_dict with an error that names the file instead of torch's dump."""
    try:
        module.load_state_dict(tensors)
    except RuntimeError as err:  # missing, unexpected or mis-shaped tensors
        raise UnsafeFileError(
            f"{source} does not match the model its config.json describes: "
            f"{str(err).splitlines()[0]} ..."
        ) from err


@contextlib.contextmanager
def exclusive_dir(directory: str | Path, what: str = "run"):
    """Hold an exclusive lock on `directory` (its `.lock` file) for the block: a second
    process writing the same run directory (say, a training left running by a stopped
    benchmark and the benchmark's resumed copy) would interleave checkpoints and logs.
    The lock is released when the process ends, however it ends."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            raise RuntimeError(
                f"{directory} is in use by another {what} (pid {holder}); stop that process "
                f"(kill its process group) or choose another out_dir"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        try:
            yield directory
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
