"""Test support shared by the tests and the benches: fake servers, the slime stand-in, offline assets.

Import as ``tests.support.<module>`` from the project root (pytest's ``pythonpath`` has ``.``; benches run as
``python -m bench.<name>``). ``sglang_engine/`` is the exception: it runs inside the SGLang test venvs and puts its
own folder and this one on ``sys.path``.
"""
