"""Text that can always be written: lone surrogates replaced before text reaches a tokenizer, a log or a file, and
tool results bounded before they reach the policy.

Python's ``json.loads`` turns an escaped lone surrogate (``"\\ud800"``, from a server reply or from JSON the policy
wrote) into a ``str`` that cannot be encoded as UTF-8: the tokenizer, ``.encode()`` and a JSON line written with
``ensure_ascii=False`` then raise ``UnicodeEncodeError``. Surrogates are the only code points a ``str`` can hold that
UTF-8 cannot, so replacing them is all it takes.
"""

from __future__ import annotations

import re
from typing import Any

from search_r1_oai.chat_template import encode_text_off_loop

_SURROGATE = re.compile("[\ud800-\udfff]")


def first_surrogate(text: str) -> int | None:
    """Index of the first lone surrogate in ``text``, ``None`` when it is valid Unicode."""
    found = _SURROGATE.search(text)
    return None if found is None else found.start()


def clean_text(text: str) -> str:
    """``text`` with every lone surrogate replaced by U+FFFD (the same object when there is none)."""
    return _SURROGATE.sub("\ufffd", text) if _SURROGATE.search(text) else text


async def bound_result(text: str, max_chars: int, max_tokens: int, tokenizer: Any) -> str:
    """``text`` cut to ``max_chars`` characters, then to ``max_tokens`` tokens, with a note for the policy, and valid
    Unicode. The character cut comes first so a result of megabytes is never scanned or tokenized whole; the token
    count is only computed when the UTF-8 length could exceed it (a token covers at least one byte)."""
    note = ""
    if len(text) > max_chars:
        note = f"\n[cut: the result had {len(text)} characters; the first {max_chars} are shown]"
        text = text[:max_chars]
    text = clean_text(text)
    if len(text.encode("utf-8")) <= max_tokens:
        return text + note
    ids = await encode_text_off_loop(tokenizer, text)
    if len(ids) > max_tokens:
        text = tokenizer.decode(ids[:max_tokens], skip_special_tokens=False)
        note = f"\n[cut: the result was longer than {max_tokens} tokens; the first {max_tokens} are shown]"
    return text + note
