"""Fallback for SGLang < 0.5.13, which returns no token ids: recover ids from text logprobs and count the drift.

Only used when ``SEARCH_R1_ALLOW_REENCODE_FALLBACK=1``. Each logprob entry names one sampled token by its text and
bytes; for byte-level BPE vocabularies the bytes identify the vocabulary entry exactly, so most ids come back
right. Entries that cannot be mapped one-to-one are re-encoded and counted as drift, and the prompt the server
rendered itself is compared with ours; the counts land in ``sample.metadata`` so a run can see how far from
token-exact it is.
"""

from __future__ import annotations

from typing import Any


def byte_level_alphabet() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map (the alphabet of byte-level BPE vocabularies)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


_BYTE_TO_UNICODE = byte_level_alphabet()


class TokenVocab:
    """A tokenizer's added tokens by text and whole vocabulary by byte-level string (built once per tokenizer: the
    rollout context keeps one)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.added: dict[str, int] = dict(tokenizer.get_added_vocab())
        self.by_bytes: dict[str, int] = dict(tokenizer.get_vocab())


def ids_from_logprob_content(vocab: TokenVocab, entries: list[dict]) -> tuple[list[int], list[float], int]:
    """``(ids, logprobs, drift)`` for OpenAI ``logprobs.content`` entries.

    An entry found in the vocabulary (as an added token, or by its bytes in byte-level form) gives its one id.
    Any other entry is re-encoded from its text: the first id gets the entry's logprob, the rest 0.0, and the
    entry counts as one unit of drift.
    """
    tokenizer = vocab.tokenizer
    ids: list[int] = []
    log_probs: list[float] = []
    drift = 0
    for entry in entries:
        token = entry.get("token") or ""
        raw_bytes = entry.get("bytes")
        logprob = float(entry.get("logprob") or 0.0)
        token_id = vocab.added.get(token)
        if token_id is None and raw_bytes:
            token_id = vocab.by_bytes.get("".join(_BYTE_TO_UNICODE[b] for b in raw_bytes))
        if token_id is not None:
            ids.append(token_id)
            log_probs.append(logprob)
            continue
        encoded = list(tokenizer.encode(token, add_special_tokens=False))
        drift += 1
        ids.extend(encoded)
        log_probs.extend([logprob] + [0.0] * (len(encoded) - 1))
    return ids, log_probs, drift


def count_drift(ours: list[int], reference: list[int]) -> int:
    """Positions where two id sequences differ, plus their length difference."""
    differing = sum(1 for a, b in zip(ours, reference, strict=False) if a != b)
    return differing + abs(len(ours) - len(reference))
