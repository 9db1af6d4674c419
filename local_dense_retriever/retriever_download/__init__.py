"""Download, merge, decompress and verify the retriever's index, corpus and encoder (see download.py)."""

from .files import DownloadError
from .manifest import MANIFEST_NAME, Manifest
from .pipeline import DownloadPlan, check_download, run_download

__all__ = ["MANIFEST_NAME", "DownloadError", "DownloadPlan", "Manifest", "check_download", "run_download"]
