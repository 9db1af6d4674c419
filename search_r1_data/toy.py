"""A small synthetic wiki-18-style corpus with known question → answer → passage facts.

The entities are invented, so an encoder cannot answer from prior knowledge and retrieval/EM results are
meaningful. Used by the tests and by ``quickstart.sh``; deterministic for a given seed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

from search_r1_data.files import atomic_path
from search_r1_oai.config import Settings

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
    with atomic_path(corpus_path) as tmp:
        tmp.write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in passages))
    with atomic_path(facts_path) as tmp:
        tmp.write_text("".join(json.dumps(asdict(f), ensure_ascii=False) + "\n" for f in facts))
    return corpus_path, facts_path


def write_toy_qa_parquet(facts: list[ToyFact], path: Path) -> Path:
    """Write the facts as a QA parquet in the shape of Search-R1's ``nq_hotpotqa_train`` (input of data_preprocess)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [
        {
            "id": f"toy_{i}",
            "question": fact.question,
            "golden_answers": [fact.answer],
            "data_source": "toy",
            "prompt": [{"role": "user", "content": fact.question}],
            "ability": "fact-reasoning",
            "reward_model": {"ground_truth": {"target": [fact.answer]}, "style": "rule"},
            "extra_info": {"split": path.stem, "index": i},
        }
        for i, fact in enumerate(facts)
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        pq.write_table(pa.Table.from_pylist(rows), tmp)
    return path


async def answer_recall(facts: list[ToyFact], settings: Settings) -> float:
    """Fraction of questions whose answer appears in the passages the rollout's own search client gets back."""
    from search_r1_oai.search_client import SearchClient

    result = await SearchClient(settings).retrieve([fact.question for fact in facts])
    found = [
        any(fact.answer in passage.text for passage in passages)
        for fact, passages in zip(facts, result.passages, strict=True)
    ]
    return sum(found) / len(facts)


def _load_facts(path: Path) -> list[ToyFact]:
    return [ToyFact(**json.loads(line)) for line in path.read_text().splitlines() if line]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Toy data for the quickstart and the tests.")
    commands = parser.add_subparsers(dest="command", required=True)
    corpus = commands.add_parser("corpus", help="write corpus.jsonl and facts.jsonl")
    corpus.add_argument("--out_dir", type=Path, required=True, help="folder for corpus.jsonl and facts.jsonl")
    corpus.add_argument("--num_entities", type=int, default=150, help="entities (each 1-3 passages, one fact)")
    corpus.add_argument("--seed", type=int, default=0, help="random seed; same seed, same corpus")
    qa = commands.add_parser("qa", help="write train/test QA parquet in the upstream Search-R1 shape")
    qa.add_argument("--facts", type=Path, required=True, help="facts.jsonl written by the corpus command")
    qa.add_argument("--out_dir", type=Path, required=True, help="folder for train.parquet and test.parquet")
    recall = commands.add_parser("recall", help="answer recall of the retriever at RETRIEVAL_SERVER_URL")
    recall.add_argument("--facts", type=Path, required=True, help="facts.jsonl written by the corpus command")
    args = parser.parse_args(argv)

    if args.command == "corpus":
        corpus_path, facts_path = write_toy_corpus(args.out_dir, args.num_entities, args.seed)
        print(f"wrote {corpus_path} and {facts_path}")
    elif args.command == "qa":
        facts = _load_facts(args.facts)
        split = len(facts) * 4 // 5
        for name, part in (("train", facts[:split]), ("test", facts[split:])):
            print(f"wrote {write_toy_qa_parquet(part, args.out_dir / f'{name}.parquet')} ({len(part)} rows)")
    else:
        settings = Settings.from_env()
        recall_value = asyncio.run(answer_recall(_load_facts(args.facts), settings))
        print(f"answer found in the top-{settings.topk} passages for {recall_value:.1%} of the toy questions")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
