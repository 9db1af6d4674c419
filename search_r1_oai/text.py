"""Text that can always be written: lone surrogates replaced before text reaches a tokenizer, a log or a file.

Python's ``json.loads`` turns an escaped lone surrogate (``"\\ud800"``, from a server reply or from JSON the policy
wrote) into a ``str`` that cannot be encoded as UTF-8: the tokenizer, ``.encode()`` and a JSON line written with
``ensure_ascii=False`` then raise ``UnicodeEncodeError``. Surrogates are the only code points a ``str`` can hold that
UTF-8 cannot, so replacing them is all it takes.
"""

from __future__ import annotations

import re

_SURROGATE = re.compile("[\ud800-\udfff]")


def first_surrogate(text: str) -> int | None:
    """Index of the first lone surrogate in ``text``, ``None`` when it is valid Unicode."""
    found = _SURROGATE.search(text)
    return None if found is None else found.start()


def clean_text(text: str) -> str:
    """``text`` with every lone surrogate replaced by U+FFFD (the same object when there is none)."""
    return _SURROGATE.sub("\ufffd", text) if _SURROGATE.search(text) else text
