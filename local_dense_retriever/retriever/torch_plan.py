"""The torch backend's memory plan: what each device holds, and a clear refusal before anything is allocated.

The OOM this prevents: the common GPU path copies all 61 GB of fp32 wiki-18 vectors to one GPU before converting
them to fp16. Here each device holds only its shard in fp16/bf16 (its "resident" bytes) plus a bounded workspace,
and the plan compares that with the device's free memory (optionally capped by ``--torch_memory_gb``, the share
the operator gives the retriever on a GPU shared with SGLang and Megatron) before the first byte is copied.

The workspace is the larger of the two phases, since the load staging is freed before the first search:
  load:   one fp32 chunk of ``load_chunk_rows`` rows, staged on the device before it is cast;
  search: the queries, a ``max_queries x chunk_rows`` score block counted twice (the matmul output and
          torch.topk's scratch), and the running top-k (scores + int64 ids, current and merged).
On CPU nothing is resident (chunks are read from the memory-mapped file, i.e. the page cache), and the search
workspace also holds the aligned fp32 copy of the current chunk. The first GPU's workspace also counts
``reserve_bytes`` for the query encoder, which loads there after the index.
"""

from __future__ import annotations

from dataclasses import dataclass

from .settings import MAX_TOPK

GIB = 1 << 30
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
# GPU: a 256k-row chunk keeps the 1024-query score block at 0.5 GiB in fp16 while each matmul stays large enough
# to run at tensor-core speed. CPU: 32 MiB fp32 chunks, like index.py's BLAS path (cache-sized, cheap to copy).
GPU_CHUNK_ROWS = 1 << 18
GPU_LOAD_CHUNK_ROWS = 1 << 16
# The E5-base encoder in fp16 with a 256 x 256-token batch of activations, on the first GPU.
ENCODER_RESERVE_BYTES = 1 << 30
CPU_CHUNK_BYTES = 32 << 20


def human(size: int) -> str:
    """Bytes as GiB, or MiB below 1 GiB (small test indexes would all read 0.00 GiB)."""
    return f"{size / GIB:.2f} GiB" if size >= GIB else f"{size / (1 << 20):.1f} MiB"


class MemoryPlanError(RuntimeError):
    """The shards do not fit the devices' free memory (raised before any allocation)."""


@dataclass(frozen=True)
class DevicePlan:
    """One device's share: rows ``[start, stop)`` and the bytes they and the workspace need."""

    device: str
    start: int
    stop: int
    resident_bytes: int
    workspace_bytes: int
    budget_bytes: int
    free_bytes: int

    @property
    def needed_bytes(self) -> int:
        return self.resident_bytes + self.workspace_bytes

    @property
    def fits(self) -> bool:
        return self.needed_bytes <= self.budget_bytes


@dataclass(frozen=True)
class MemoryPlan:
    """The whole plan; ``describe()`` is what the server logs at start, ``check()`` refuses what does not fit."""

    ntotal: int
    dim: int
    dtype: str
    chunk_rows: int
    load_chunk_rows: int
    max_queries: int
    limit_bytes: int | None
    devices: list[DevicePlan]

    def describe(self) -> list[str]:
        limit = "none" if self.limit_bytes is None else human(self.limit_bytes)
        lines = [
            f"torch backend memory plan: {self.ntotal:,} x {self.dim} vectors in {self.dtype} over "
            f"{len(self.devices)} device(s), search chunk {self.chunk_rows:,} rows, batches of up to "
            f"{self.max_queries} queries, --torch_memory_gb limit {limit}"
        ]
        for part in self.devices:
            resident = "streamed from the memory-mapped file" if part.device == "cpu" else "resident"
            verdict = "fits" if part.fits else "DOES NOT FIT"
            lines.append(
                f"  {part.device}: rows {part.start:,}..{part.stop:,} {resident} {human(part.resident_bytes)}"
                f" + workspace {human(part.workspace_bytes)} = {human(part.needed_bytes)} of "
                f"{human(part.budget_bytes)} available ({human(part.free_bytes)} free): {verdict}"
            )
        return lines

    def check(self) -> None:
        """Raise ``MemoryPlanError`` naming the device, the numbers and the fixes when a shard does not fit."""
        for part in self.devices:
            if part.fits:
                continue
            if part.resident_bytes > part.budget_bytes:
                room = part.budget_bytes - part.workspace_bytes
                total = self.ntotal * self.dim * DTYPE_BYTES[self.dtype]
                gpus = f"at least {-(-total // room)} GPUs with this budget" if room > 0 else "more memory per GPU"
                fix = (
                    f"the vectors alone do not fit ({gpus}): make more GPUs visible (CUDA_VISIBLE_DEVICES), free "
                    "GPU memory (lower SGLang's --mem-fraction-static), or raise --torch_memory_gb if it caps this "
                    "below free"
                )
            else:
                fix = "lower --torch_chunk_rows or --max_batch_size/--max_queries (smaller workspace), or free memory"
            raise MemoryPlanError(
                f"torch backend: {part.device} needs {human(part.needed_bytes)} (vectors "
                f"{human(part.resident_bytes)} + workspace {human(part.workspace_bytes)}) but only "
                f"{human(part.budget_bytes)} are available ({human(part.free_bytes)} free); {fix}. "
                "Nothing was allocated."
            )


def default_chunk_rows(device: str, dim: int) -> int:
    """Rows per search chunk when ``--torch_chunk_rows`` is 0 (auto)."""
    if device == "cpu":
        return max(1024, CPU_CHUNK_BYTES // (4 * dim))
    return GPU_CHUNK_ROWS


def split_rows(ntotal: int, parts: int) -> list[tuple[int, int]]:
    """Contiguous, near-equal ``[start, stop)`` ranges, one per device (the first ones get the remainder)."""
    base, extra = divmod(ntotal, parts)
    ranges, start = [], 0
    for i in range(parts):
        stop = start + base + (1 if i < extra else 0)
        ranges.append((start, stop))
        start = stop
    return ranges


def plan_memory(
    ntotal: int,
    dim: int,
    devices: list[str],
    free_bytes: list[int],
    dtype: str,
    chunk_rows: int,
    max_queries: int,
    limit_bytes: int | None = None,
    load_chunk_rows: int = GPU_LOAD_CHUNK_ROWS,
    k: int = MAX_TOPK,
    reserve_bytes: int = 0,
) -> MemoryPlan:
    """Plan the shards of ``ntotal x dim`` vectors over ``devices`` given each one's free bytes (pure: testable)."""
    if len(free_bytes) != len(devices) or not devices:
        raise ValueError("plan_memory needs one free-bytes figure per device, and at least one device")
    elem = DTYPE_BYTES[dtype]
    parts = []
    for device, free, (start, stop) in zip(devices, free_bytes, split_rows(ntotal, len(devices)), strict=True):
        rows = stop - start
        on_cpu = device == "cpu"
        chunk = max(1, min(chunk_rows, rows))
        topk_bytes = max_queries * 2 * k * (4 + 8) * 2
        search = max_queries * dim * elem + 2 * max_queries * chunk * elem + topk_bytes
        if on_cpu:
            search += chunk * dim * 4  # the aligned fp32 copy of the chunk being scored
            load = 0
        else:
            load = max(1, min(load_chunk_rows, rows)) * dim * 4
        resident = 0 if on_cpu else rows * dim * elem
        budget = free if limit_bytes is None else min(free, limit_bytes)
        reserve = reserve_bytes if not parts else 0
        parts.append(DevicePlan(device, start, stop, resident, max(search, load) + reserve, budget, free))
    return MemoryPlan(ntotal, dim, dtype, chunk_rows, load_chunk_rows, max_queries, limit_bytes, parts)
