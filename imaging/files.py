"""Writing files so that a crash never leaves half of one."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_atomic(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` via a temp file in the same folder and ``os.replace``:
    readers see the old file or the whole new one, never a partial write."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())  # survive a power cut, not just a process crash
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; previews are read by the web server
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def create_private_json(path: str | Path, data: dict) -> None:
    """Write ``data`` as JSON to ``path``, readable by the owner only, unless ``path`` exists:
    concurrent first callers agree on one file (secrets generated once: credentials, tokens)."""
    import json

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # 0600
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1)
        os.link(tmp, path)  # fails if it exists: the first writer wins
    except FileExistsError:
        pass
    finally:
        os.unlink(tmp)


def save_torch_atomic(obj, path: str | Path) -> Path:
    """``torch.save`` through :func:`write_atomic`: a crash never leaves half a model file."""
    import io

    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    return write_atomic(path, buf.getvalue())
