"""Retriever service internals: corpus (mmap + offsets), encoder, index (FAISS mmap/GPU), batcher, HTTP app.

Importing the package is cheap (no torch/faiss); heavy modules load when the engine does.
"""
