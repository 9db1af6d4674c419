"""Data preparation: Search-R1 QA parquet -> slime-ready parquet (:mod:`.convert`), the checks slime and the reward
need (:mod:`.check`) and the toy corpus for the quickstart and the tests (:mod:`.toy`).

Its own package because it runs before training, on any machine, never inside slime's workers; it imports the prompt,
tool schema and label parser from :mod:`search_r1_oai` so both sides agree on them.
"""
