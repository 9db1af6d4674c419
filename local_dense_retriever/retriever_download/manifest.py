"""The record of finished downloads: final file sizes, so a rerun can prove there is nothing left to do.

Written only after a file is complete and verified; a file without an entry is treated as not done.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .files import DownloadError, read_json, write_json_atomic

MANIFEST_NAME = "download_manifest.json"
_VERSION = 1


class Manifest:
    """Final sizes of the files in one download folder (and of the encoder's files, wherever they live)."""

    def __init__(self, path: Path, data: dict[str, Any] | None = None) -> None:
        self.path = path
        self.data: dict[str, Any] = data or {"version": _VERSION, "files": {}, "model": None}

    @classmethod
    def load(cls, directory: Path) -> Manifest:
        path = directory / MANIFEST_NAME
        data = read_json(path)
        if data is not None and (not isinstance(data, dict) or data.get("version") != _VERSION):
            raise DownloadError(f"{path} was not written by this version of download.py; delete it and rerun")
        return cls(path, data)

    def save(self) -> None:
        write_json_atomic(self.path, self.data)

    def file_size(self, name: str) -> int | None:
        entry = self.data["files"].get(name)
        return None if entry is None else int(entry["size"])

    def record_file(self, name: str, size: int, source: str) -> None:
        self.data["files"][name] = {"size": size, "source": source}
        self.save()

    def forget_file(self, name: str) -> None:
        if self.data["files"].pop(name, None) is not None:
            self.save()

    def record_model(self, name: str, model_dir: Path, files: dict[str, int]) -> None:
        self.data["model"] = {"name": name, "dir": str(model_dir.resolve()), "files": files}
        self.save()

    def model_problems(self, name: str, model_dir: Path) -> list[str]:
        """Why the recorded model is not ``name`` complete in ``model_dir`` (empty: it is)."""
        entry = self.data.get("model")
        if not entry or entry["name"] != name or entry["dir"] != str(model_dir.resolve()):
            return [f"model {name} in {model_dir} is not recorded as downloaded"]
        return [
            f"{model_dir / rel}: expected {size} bytes"
            for rel, size in entry["files"].items()
            if not (model_dir / rel).is_file() or (model_dir / rel).stat().st_size != size
        ]
