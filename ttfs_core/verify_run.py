"""A verification shared by several processes: the ranks (`torch.distributed`, launched by torchrun), the rounds in
which they check the shards of a dataset, and the report file rank 0 rewrites after every round.

`Run.open` starts a run, or resumes the one a report file records (`verify.RunFile`); `Run.execute` checks the
shards still to do, one per rank per round, merges the round's reports on every rank (`verify.Report.merge`) and
writes the file. Every rank sees every round and every error, so all of them stop together with the same message
(`RunError`). `share_network` converts once, on rank 0, and gives every rank the same network.
"""

from __future__ import annotations

import datetime
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .command import one_line
from .network import SpikingNetwork
from .persist import load_network, save_network
from .verify import Bounds, Report, RunFile, Verifier, check_shard, digest, shard_count


# --- several processes -----------------------------------------------------------------------------------------
class Ranks:
    """The processes sharing a verification: this one alone, or the members of a `torch.distributed` process group
    (launched by torchrun, which sets RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT; gloo on CPUs, NCCL when the
    network runs on CUDA). Everything they exchange is a small picklable object (a report, a network file's
    bytes)."""

    def __init__(self, rank: int = 0, world: int = 1, group: bool = False):
        self.rank, self.world, self.group = rank, world, group

    @classmethod
    def from_env(cls, device: torch.device, timeout_s: float = 1800.0) -> Ranks:
        """Join the process group torchrun describes in the environment; a single process without one."""
        world = int(os.environ.get("WORLD_SIZE", "1") or 1)
        if world <= 1:
            return cls()
        import torch.distributed as dist

        if not dist.is_available():
            raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
        if not dist.is_initialized():
            backend = "nccl" if device.type == "cuda" else "gloo"
            if device.type == "cuda":
                torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
            dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
        return cls(dist.get_rank(), dist.get_world_size(), True)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's `obj`, in rank order, on every rank."""
        if not self.group:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank."""
        if not self.group:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def on_main(self, work: Callable[[], Any], errors: tuple[type[BaseException], ...] = (ValueError, OSError,
                                                                                          RuntimeError)) -> Any:
        """`work()` on rank 0, its result on every rank; an error of a type in `errors` there is raised on every
        rank, as a RunError with its message on one line."""
        payload = None
        if self.main:
            try:
                payload = ("ok", work())
            except errors as e:
                payload = ("error", one_line(e))
        kind, value = self.broadcast(payload)
        if kind == "error":
            raise RunError(value)
        return value

    def close(self) -> None:
        if self.group:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


class RunError(ValueError):
    """A verification shared by several processes cannot go on: raised with the same message on every rank."""


def share_network(ranks: Ranks, make: Callable[[], SpikingNetwork],
                  errors: tuple[type[BaseException], ...] = (ValueError, OSError, RuntimeError)
                  ) -> tuple[SpikingNetwork, str]:
    """The network `make()` builds on rank 0 (a conversion calibrates once), on every rank, with the SHA-256 of its
    saved bytes. It crosses ranks as a network file's bytes (`persist` reads and writes files only)."""
    blob = ranks.on_main(lambda: _network_bytes(make()), errors)
    return _network_from_bytes(blob), digest(blob)


def _network_bytes(snn: SpikingNetwork) -> bytes:
    with tempfile.TemporaryDirectory(prefix="ttfs-") as tmp:
        path = Path(tmp) / "network.safetensors"
        save_network(snn, path)
        return path.read_bytes()


def _network_from_bytes(blob: bytes) -> SpikingNetwork:
    with tempfile.TemporaryDirectory(prefix="ttfs-") as tmp:
        path = Path(tmp) / "network.safetensors"
        path.write_bytes(blob)
        return load_network(path)


def my_shards(todo: list[int], ranks: Ranks) -> Iterator[list[int | None]]:
    """Rounds of work: in each, rank r takes the r-th of the next `world` shards still to do (None when there are
    fewer). Every rank sees every round, so all of them gather together."""
    for lo in range(0, len(todo), ranks.world):
        group = todo[lo:lo + ranks.world]
        yield [group[r] if r < len(group) else None for r in range(ranks.world)]


# --- a run: every shard, over the ranks, into the report file -----------------------------------------------
@dataclass
class Run:
    """A verification of a dataset shared by `ranks`: the shards still to do, the report so far and, on rank 0,
    the report file, rewritten after every round so that an interrupted run can resume (`RunFile`)."""

    verifier: Verifier
    source: Any  # a `ttfs_core.data.Source`: len(), batch(lo, hi) -> (inputs, labels or None), labelled
    ranks: Ranks
    shard_size: int
    batch_size: int
    report: Report
    done: tuple[int, ...] = ()  # the shards completed before this run (resumed from the report file)
    file: RunFile | None = None  # rank 0's report file; None without one and on the other ranks

    @property
    def shards(self) -> int:
        return shard_count(len(self.source), self.shard_size)

    @classmethod
    def open(cls, verifier: Verifier, source: Any, ranks: Ranks, shard_size: int, batch_size: int,
             path: Path | None = None, config: dict[str, Any] | None = None, resume: bool = False) -> Run:
        """A run from its first shard, or, with `resume`, from the report file `path` of the same run (`config`,
        needed on rank 0 only; `RunFile.resume` checks it and the report on rank 0, and a report that does not fit
        raises a RunError on every rank). Without `path` no file is written."""
        n, config = len(source), config or {}

        def read() -> tuple[list[int], dict | None]:
            if not resume:
                return [], None
            bounds = Bounds.of(verifier.snn, source.batch(0, 1)[0][0].numel(), source.labelled, n, shard_size)
            resumed = RunFile.resume(Path(path), config, bounds)
            return sorted(resumed.completed), resumed.report.to_json()

        done, resumed = ranks.on_main(read)
        report = Report.from_json(resumed) if resumed is not None else Report.empty(verifier.snn)
        file = (RunFile(Path(path), config, report, set(done), shard_count(n, shard_size))
                if ranks.main and path is not None else None)
        return cls(verifier, source, ranks, shard_size, batch_size, report, tuple(done), file)

    def execute(self, progress: Callable[[int], None] | None = None) -> Report:
        """Check every shard not done yet, in rounds of one shard per rank (`my_shards`); after each round every
        rank merges the round's reports and rank 0 rewrites the report file. `progress(images)`: the images done
        so far, estimated within a round as this rank's count times the ranks busy. A shard that fails stops the
        run with a RunError on every rank. Returns the report of the whole dataset."""
        ranks, n = self.ranks, len(self.source)
        report = self.report
        todo = [k for k in range(self.shards) if k not in set(self.done)]
        finished = report.images
        for round_ in my_shards(todo, ranks):
            mine = round_[ranks.rank]
            own = 0
            busy = sum(k is not None for k in round_)

            def step(count: int, base: int = finished, busy: int = busy) -> None:
                nonlocal own
                own += count
                if progress is not None:
                    progress(min(n, base + own * busy))

            result = None
            if mine is not None:
                try:
                    result = ("ok", mine, check_shard(self.verifier, self.source.batch, mine, n, self.shard_size,
                                                      self.batch_size, step))
                except (ValueError, OSError, RuntimeError) as e:
                    result = ("error", mine, f"rank {ranks.rank}, shard {mine}: {one_line(e)}")
            gathered = [r for r in ranks.gather(result) if r is not None]
            errors = [r[2] for r in gathered if r[0] == "error"]
            if errors:
                raise RunError(errors[0])
            for _, k, shard_report in gathered:
                report = report.merge(shard_report)
                if self.file is not None:
                    self.file.completed.add(k)
            self.report, finished = report, report.images
            if progress is not None:
                progress(finished)
            if self.file is not None:
                self.file.report = report
                self.file.write()
        return report
