"""The fallback id source for SGLang < 0.5.13, which returns no token ids: ids recovered from text logprobs, and the
drift from token-exact counted.

Only used when ``SEARCH_R1_ALLOW_REENCODE_FALLBACK=1`` (:func:`~search_r1_oai.token_ids.choose_id_source` picks
it). Each logprob entry names one sampled token by its text and bytes; for byte-level BPE vocabularies the bytes
identify the vocabulary entry exactly, so most ids come back right. Entries that cannot be mapped one-to-one are
re-encoded and counted as drift, and the prompt the server rendered itself is compared with ours; the counts land in
``sample.metadata`` so a run can see how far from token-exact it is.
"""

from __future__ import annotations

from typing import Any

from search_r1_oai.chat_template import render_prompt_ids
from search_r1_oai.server_values import check_reply, check_sampled
from search_r1_oai.sglang_wire import TurnOutput
from search_r1_oai.trajectory import Reply


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


class ReencodedIds:
    """The id source of a server without token ids: the server renders the whole conversation every turn (it takes
    no ``input_ids``), sampled ids come from its text logprobs, and every difference of its render from ours is
    drift."""

    reencoded = True

    def __init__(self, vocab: TokenVocab, tools: list[dict]) -> None:
        self._vocab = vocab
        self._tools = tools

    def read(self, output: TurnOutput, tokens: list[int], messages: list[dict], vocab_size: int) -> Reply:
        """The reply's ids, checked; on the first turn (no ``tokens`` yet) our render stands in for the prompt ids."""
        check_reply(output, vocab_size)
        ids, log_probs, drift = ids_from_logprob_content(self._vocab, output.logprob_content or [])
        check_sampled(ids, log_probs, vocab_size)
        ours = render_prompt_ids(self._vocab.tokenizer, messages, self._tools)
        if tokens:  # positions where our ids and the server's render differ, plus their length difference
            drift += sum(a != b for a, b in zip(tokens, ours, strict=False)) + abs(len(tokens) - len(ours))
        return Reply(None if tokens else ours, None, ids, log_probs, drift, reencoded=True)
