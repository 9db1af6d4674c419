"""Fetch the wiki-18 E5 index, corpus and encoder for the retriever: ``python download.py --save_path DIR``.

Thin entry point; the logic (resumable merge, streaming decompress, size checks, manifest) lives in
``retriever_download/`` next to this file. Run with ``--help`` for every flag.
"""

import sys

from retriever_download.cli import main

if __name__ == "__main__":
    sys.exit(main())
