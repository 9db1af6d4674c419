"""The files of an evaluation folder: ``results.jsonl`` holds finished samples only, ``failures.jsonl`` every failed
attempt (a log of reasons, never counted as done, so resume runs those samples again).

Each record is one whole line, written with one ``write`` loop and ``fsync``ed before the next; a write that fails
(a full disk) is cut back to the last whole line and reported as :class:`ResultsWriteError` naming the file. A line
that is not a whole record anyway (``kill -9``, power loss) is found when the file is opened again: it is moved to
a side file ``results.jsonl.partial-<time>`` (kept, never deleted) and its sample is run again.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from search_r1_data.files import write_atomic
from search_r1_eval.dataset import EvalItem
from search_r1_oai.text import clean_text

RESULTS = "results.jsonl"
FAILURES = "failures.jsonl"
# Outcomes that are not a result: the sample is run again on resume.
FAILED_STATUSES = frozenset({"FAILED", "ABORTED"})


def json_line(record: dict[str, Any]) -> bytes:
    """One record as a UTF-8 JSON line; invalid Unicode in any string becomes U+FFFD instead of raising."""
    return (clean_text(json.dumps(record, ensure_ascii=False, default=str)) + "\n").encode("utf-8")


# A trajectory cut by its wall-clock deadline (TRUNCATED, stop_reason "deadline") was cut by slow servers, not by
# the policy: it is not scored as a wrong answer either.
FAILED_STOP_REASONS = frozenset({"deadline"})


def is_failure(record: dict[str, Any]) -> bool:
    """Whether a record is a failed attempt (run again on resume) rather than a result."""
    return record.get("status") in FAILED_STATUSES or record.get("stop_reason") in FAILED_STOP_REASONS


class ResultsWriteError(OSError):
    """A record could not be written (full disk, quota, file size limit); names the file and the error."""

    def __init__(self, path: Path, error: OSError) -> None:
        super().__init__(error.errno, f"cannot write {path}: {error.strerror or error}")
        self.path = path

    def __str__(self) -> str:
        return str(self.args[1])


class JsonLinesFile:
    """An append-only file of whole JSON lines."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as exc:
            raise ResultsWriteError(path, exc) from None

    def append(self, record: dict[str, Any]) -> None:
        """Write ``record`` as one line and fsync it; on failure cut the file back to its last whole line."""
        data = memoryview(json_line(record))
        start = os.fstat(self._fd).st_size
        try:
            while data:
                written = os.write(self._fd, data)
                data = data[written:]
            os.fsync(self._fd)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, start)
            raise ResultsWriteError(self.path, exc) from None

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._fd)


def _side_file(path: Path) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    candidate = path.with_name(f"{path.name}.partial-{stamp}")
    counter = 1
    while candidate.exists():
        candidate = path.with_name(f"{path.name}.partial-{stamp}-{counter}")
        counter += 1
    return candidate


def recover(path: Path) -> tuple[list[dict[str, Any]], str | None]:
    """The whole records of ``path``, and a message when lines that are not whole records were set aside.

    Such lines (a cut-off last line, or one glued to the next by an older writer) go to a side file next to
    ``path``; ``path`` is then rewritten with the whole lines only (atomically), so new records start on a line of
    their own. Call with the folder's lock held."""
    if not path.exists():
        return [], None
    data = path.read_bytes()
    lines = data.split(b"\n")
    tail = lines.pop()  # the bytes after the last newline: empty unless the last line was cut off
    good: list[bytes] = []
    records: list[dict[str, Any]] = []
    bad: list[bytes] = []
    for raw in lines:
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except ValueError:  # not JSON, or not UTF-8
            record = None
        if isinstance(record, dict) and isinstance(record.get("id"), str):
            good.append(raw)
            records.append(record)
        else:
            bad.append(raw)
    if tail.strip():
        bad.append(tail)
    if not bad and not tail:
        return records, None
    if not bad:  # only whitespace after the last newline
        write_atomic(path, b"".join(line + b"\n" for line in good))
        return records, None
    side = _side_file(path)
    write_atomic(side, b"".join(line + b"\n" for line in bad))
    write_atomic(path, b"".join(line + b"\n" for line in good))
    return records, (
        f"{path}: {len(bad)} incomplete line(s) (a run cut off mid-write) set aside in {side}; "
        "their samples are run again"
    )


def _legacy_match(record: dict[str, Any], item: EvalItem) -> bool:
    """Whether a record from an evaluate.py that keyed by file name and row alone is really this item's."""
    messages = record.get("messages")
    return (
        record.get("data_source") == item.data_source
        and record.get("question") == item.question
        and record.get("gold") == item.gold
        and isinstance(messages, list)
        and messages[: len(item.messages)] == item.messages
    )


def key_of(record: dict[str, Any], items_by_id: dict[str, list[EvalItem]]) -> str | None:
    """The sample key of a record: its own ``key``, or for an older record (no ``key``: its ``id`` was file name
    and row only, which collide across folders) the key of the item with that id whose content it matches."""
    key = record.get("key")
    if isinstance(key, str):
        return key
    for item in items_by_id.get(record.get("id", ""), []):
        with contextlib.suppress(ValueError):
            if _legacy_match(record, item):
                return item.key
    return None


class ResultsStore:
    """The results and failures of one ``--out`` folder (open it with the folder's lock held)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.results_path = folder / RESULTS
        self.failures_path = folder / FAILURES
        self.records: list[dict[str, Any]] = []
        self.failures: list[dict[str, Any]] = []
        self._results: JsonLinesFile | None = None
        self._failures: JsonLinesFile | None = None

    def open(self) -> list[str]:
        """Read both files (setting incomplete lines aside) and open them for appending; returns messages."""
        self.folder.mkdir(parents=True, exist_ok=True)
        messages = []
        for path, target in ((self.results_path, self.records), (self.failures_path, self.failures)):
            records, message = recover(path)
            target.extend(records)
            if message:
                messages.append(message)
        self._results, self._failures = JsonLinesFile(self.results_path), JsonLinesFile(self.failures_path)
        return messages

    def add(self, record: dict[str, Any]) -> None:
        """Append a finished sample to the results, a failed one to the failures."""
        target = self._failures if is_failure(record) else self._results
        assert target is not None, "open() first"
        target.append(record)
        (self.failures if is_failure(record) else self.records).append(record)

    def close(self) -> None:
        for file in (self._results, self._failures):
            if file is not None:
                file.close()

    def state(self, items: Iterable[EvalItem]) -> Resume:
        """Which of ``items`` are done (their record), and which failed on their last attempt."""
        return Resume.of(list(items), self.records, self.failures)


class Resume:
    """The items of this run split by what the files say: ``done`` (key -> its record), ``failed`` (key -> the
    latest failed attempt, for items not done), and notes about records that were left out."""

    def __init__(self) -> None:
        self.done: dict[str, dict[str, Any]] = {}
        self.failed: dict[str, dict[str, Any]] = {}
        self.notes: list[str] = []

    @classmethod
    def of(cls, items: list[EvalItem], records: list[dict[str, Any]], failures: list[dict[str, Any]]) -> Resume:
        resume = cls()
        wanted = {item.key for item in items}
        by_id: dict[str, list[EvalItem]] = {}
        for item in items:
            by_id.setdefault(item.id, []).append(item)
        duplicates = unmatched = 0
        for record in records:
            key = key_of(record, by_id)
            if key is None:
                unmatched += "key" not in record and record.get("id") in by_id
                continue
            if key not in wanted:
                continue
            if is_failure(record):  # an older evaluate.py kept failures as results
                resume.failed[key] = record
            elif key in resume.done:
                duplicates += 1
            else:
                resume.done[key] = record
        for record in failures:
            key = record.get("key")
            if key in wanted and key not in resume.done:
                resume.failed[key] = record  # the latest attempt wins
        for key in resume.done:
            resume.failed.pop(key, None)
        if duplicates:
            resume.notes.append(f"{duplicates} duplicate record(s) of a sample in the results ignored (first kept)")
        if unmatched:
            resume.notes.append(
                f"{unmatched} record(s) from an older evaluate.py have a file name and row of this run but another "
                "question: they are left out and those samples are run again"
            )
        return resume
