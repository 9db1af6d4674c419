"""Run a command with the secrets of a private slime config masked in everything it prints.

The launcher hands slime the W&B key (and the retriever's key) in its private slime config, and slime prints the
values of that file's keys: ``Argument wandb_key is already set to None, will override with <key>``
(slime/utils/arguments.py), and Megatron lists every argument. Ray keeps a job driver's output in a log file under
its temp dir and serves it to ``ray job logs``. The launcher runs slime's train.py under this filter, so neither
sees a secret.

    python3 -m search_r1_oai.redact_output CONFIG_YAML -- COMMAND [ARG...]

Exit status: the command's (128 + N when a signal N ended it). INT, TERM and HUP are passed on to the command,
and its output is read to the end, so what it prints while stopping is masked too.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterable

from search_r1_oai.config import MASK, SECRET_KEYS, read_config_file

CHUNK = 1 << 16


class Redactor:
    """Masks every occurrence of the secrets in a byte stream fed in arbitrary chunks: the last bytes of a chunk
    are held back until the next one shows they are not the start of a secret."""

    def __init__(self, secrets: Iterable[str]) -> None:
        self._secrets = sorted({s.encode() for s in secrets if s}, key=len, reverse=True)
        self._hold = max((len(s) for s in self._secrets), default=1) - 1
        self._pending = b""

    def feed(self, chunk: bytes) -> bytes:
        data = self._mask(self._pending + chunk)
        if self._hold == 0:
            self._pending = b""
            return data
        # A line end cannot be inside a secret: everything up to the last one is safe to pass on now.
        cut = max(len(data) - self._hold, data.rfind(b"\n") + 1)
        self._pending = data[cut:]
        return data[:cut]

    def flush(self) -> bytes:
        data, self._pending = self._pending, b""
        return data

    def _mask(self, data: bytes) -> bytes:
        for secret in self._secrets:
            data = data.replace(secret, MASK.encode())
        return data


def secrets_of(config_path: str) -> list[str]:
    config = read_config_file(config_path)
    return [str(value) for key, value in config.items() if str(key) in SECRET_KEYS and value not in (None, "")]


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) < 3 or args[1] != "--":
        print("usage: python3 -m search_r1_oai.redact_output CONFIG_YAML -- COMMAND [ARG...]", file=sys.stderr)
        return 2
    redactor = Redactor(secrets_of(args[0]))
    child = subprocess.Popen(args[2:], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    def forward(signum: int, _frame: object) -> None:
        if child.poll() is None:
            child.send_signal(signum)

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, forward)
    assert child.stdout is not None
    out = sys.stdout.buffer
    fd = child.stdout.fileno()
    while chunk := os.read(fd, CHUNK):
        out.write(redactor.feed(chunk))
        out.flush()
    out.write(redactor.flush())
    out.flush()
    code = child.wait()
    return 128 - code if code < 0 else code


if __name__ == "__main__":
    sys.exit(main())
