"""A small synthetic wiki-18-style corpus with known question → answer → passage facts.

The entities are invented, so an encoder cannot answer from prior knowledge and retrieval/EM results are
meaningful. Used by the tests and by ``quickstart.sh``; deterministic for a given seed.
"""

from __future__ import annotations

import argparse
import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

_SYLLABLES = [
    "zor", "vath", "kel", "min", "ald", "mere", "quin", "tar", "bel", "dros", "yen", "lok", "fira", "gul",
    "hesk", "ith", "jarn", "ovo", "plen", "rask", "sulm", "tov", "ulv", "wex", "brim", "cado", "dun", "elk",
]  # fmt: skip

# (passage sentence, question, kind of answer) per relation; {e} is the entity, {a} the answer.
_RELATIONS = [
    ("{e} is a painter who was born in the mountain town of {a}.", "In which town was the painter {e} born?", "place"),
    ("The river {e} flows for 300 kilometres and ends in the lake called {a}.", "Into which lake does the river {e} flow?", "place"),
    ("{e} is an engine that was invented by the engineer {a}.", "Who invented the {e} engine?", "person"),
    ("The festival of {e} was first held in the year {a}.", "In what year was the festival of {e} first held?", "year"),
    ("{e} is a novel written by the author {a}.", "Who wrote the novel {e}?", "person"),
]  # fmt: skip
_FILLER = [
    "{e} is described in several regional encyclopedias.",
    "Local historians have written about {e} for many decades.",
    "Visitors often mention {e} in travel diaries.",
]


@dataclass(frozen=True)
class ToyFact:
    """One answerable question: ``passage_id`` holds the sentence that answers it."""

    question: str
    answer: str
    passage_id: str
    title: str


def _name(rng: random.Random, parts: int) -> str:
    return "".join(rng.choice(_SYLLABLES) for _ in range(parts)).capitalize()


def _answer(rng: random.Random, kind: str) -> str:
    if kind == "year":
        return str(rng.randint(1100, 1990))
    if kind == "person":
        return f"{_name(rng, 2)} {_name(rng, 3)}"
    return _name(rng, 3)


def make_toy_corpus(num_entities: int = 150, seed: int = 0) -> tuple[list[dict], list[ToyFact]]:
    """Return ``(passages, facts)``: passages in wiki-18 jsonl shape, one fact per entity.

    Each entity has one fact passage and up to two filler passages, so every passage about an entity fits
    in a top-3 result for a question about it.
    """
    rng = random.Random(seed)
    passages: list[dict] = []
    facts: list[ToyFact] = []
    used: set[str] = set()
    for _ in range(num_entities):
        entity = _name(rng, 3)
        while entity in used:
            entity = _name(rng, 3)
        used.add(entity)
        sentence, question, kind = rng.choice(_RELATIONS)
        answer = _answer(rng, kind)
        fact_id = str(len(passages))
        passages.append(_passage(fact_id, entity, sentence.format(e=entity, a=answer)))
        facts.append(ToyFact(question.format(e=entity), answer, fact_id, entity))
        for filler in rng.sample(_FILLER, k=rng.randint(0, 2)):
            passages.append(_passage(str(len(passages)), entity, filler.format(e=entity)))
    return passages, facts


def _passage(doc_id: str, title: str, text: str) -> dict:
    return {"id": doc_id, "contents": f'"{title}"\n{text}'}


def write_toy_corpus(out_dir: Path, num_entities: int = 150, seed: int = 0) -> tuple[Path, Path]:
    """Write ``corpus.jsonl`` and ``facts.jsonl`` into ``out_dir``; return both paths."""
    passages, facts = make_toy_corpus(num_entities, seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    corpus_path, facts_path = out_dir / "corpus.jsonl", out_dir / "facts.jsonl"
    corpus_path.write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in passages))
    facts_path.write_text("".join(json.dumps(asdict(f), ensure_ascii=False) + "\n" for f in facts))
    return corpus_path, facts_path


def main() -> None:
    parser = argparse.ArgumentParser(description="Write a synthetic wiki-18-style corpus and its QA facts.")
    parser.add_argument("--out_dir", type=Path, required=True, help="folder for corpus.jsonl and facts.jsonl")
    parser.add_argument("--num_entities", type=int, default=150, help="entities (each 1-3 passages, one fact)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; same seed, same corpus")
    args = parser.parse_args()
    corpus_path, facts_path = write_toy_corpus(args.out_dir, args.num_entities, args.seed)
    print(f"wrote {corpus_path} and {facts_path}")


if __name__ == "__main__":
    main()
