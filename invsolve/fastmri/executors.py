"""Executors: run the benchmark's work unit ``fn(config, task)`` over many tasks.

The work unit is a pure function of its arguments (``invsolve.fastmri.runner.run_task``): it
reads its files, seeds its own ``torch.Generator``s from (config, task) and returns a plain dict,
so every executor gives the same rows; results come back to the coordinating process, which alone
writes the database, in completion order.

- ``local`` with ``workers=1`` runs the tasks one after another in this process;
  ``workers=N > 1`` runs them in N worker processes (``concurrent.futures``; forkserver, else spawn), each with
  ``threads`` torch threads.
- ``ray`` submits one Ray task per work unit (``pip install 'invsolve[distributed]'``): a local
  Ray is started when none is running and no ``address`` is given; ``address`` joins an existing
  cluster (e.g. ``"auto"`` or ``"ray://head:10001"``); each task asks for ``gpus_per_task`` GPUs
  (default: 1 when the cluster has GPUs, else 0) and ``threads`` CPUs.
"""

from __future__ import annotations

import concurrent.futures as futures
import multiprocessing
import os
from typing import Any, Callable, Iterable, Iterator

import torch

from ..errors import ConfigError

Task = Any
Result = dict


def default_threads(workers: int) -> int:
    return max(1, (os.cpu_count() or 1) // max(1, workers))


def _init_worker(threads: int) -> None:
    torch.set_num_threads(threads)


def _context():
    """``forkserver`` where available (a clean single-threaded server imports torch and invsolve once
    and forks the workers from it), else ``spawn``; never ``fork`` a process that holds torch threads."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["torch", "invsolve.fastmri.runner"])
        return context
    return multiprocessing.get_context("spawn")


class LocalExecutor:
    """Tasks in this process (``workers=1``) or in ``workers`` spawned processes."""

    name = "local"

    def __init__(self, workers: int = 1, threads: int | None = None):
        if workers < 1:
            raise ConfigError(f"workers must be >= 1, got {workers}")
        self.workers = int(workers)
        self.threads = int(threads or default_threads(self.workers))

    def map(self, fn: Callable[[Any, Task], Result], config, tasks: Iterable[Task]) -> Iterator[tuple[Task, Result]]:
        tasks = list(tasks)
        if self.workers == 1:
            previous = torch.get_num_threads()
            torch.set_num_threads(self.threads)
            try:
                for task in tasks:
                    yield task, fn(config, task)
            finally:
                torch.set_num_threads(previous)
            return
        context = _context()
        pool = futures.ProcessPoolExecutor(max_workers=min(self.workers, max(1, len(tasks))), mp_context=context,
                                           initializer=_init_worker, initargs=(self.threads,))
        try:
            pending = {pool.submit(fn, config, task): task for task in tasks}
            for future in futures.as_completed(pending):
                yield pending[future], future.result()
        finally:
            for future in pending:
                future.cancel()
            pool.shutdown(wait=True, cancel_futures=True)


class RayExecutor:
    """One Ray task per work unit; results are gathered as they finish."""

    name = "ray"

    def __init__(self, address: str | None = None, gpus_per_task: float | None = None, threads: int = 1,
                 max_in_flight: int | None = None):
        self.ray = import_ray()
        self.address = address
        self.gpus_per_task = gpus_per_task
        self.threads = int(threads)
        self.max_in_flight = max_in_flight

    def _start(self) -> None:
        ray = self.ray
        if not ray.is_initialized():
            # address=None starts a local Ray (or joins RAY_ADDRESS when that is set)
            ray.init(address=self.address, ignore_reinit_error=True, log_to_driver=False)
        if self.gpus_per_task is None:
            self.gpus_per_task = 1 if ray.cluster_resources().get("GPU", 0) > 0 else 0

    def map(self, fn: Callable[[Any, Task], Result], config, tasks: Iterable[Task]) -> Iterator[tuple[Task, Result]]:
        self._start()
        ray = self.ray
        threads = self.threads

        def unit(config, task):
            torch.set_num_threads(threads)
            return fn(config, task)

        remote = ray.remote(num_cpus=threads, num_gpus=self.gpus_per_task, max_retries=2)(unit)
        tasks = list(tasks)
        limit = self.max_in_flight or max(1, int(ray.cluster_resources().get("CPU", 1) // max(1, threads)) * 2)
        config_ref = ray.put(config)
        queue = list(reversed(tasks))
        in_flight: dict = {}
        try:
            while queue or in_flight:
                while queue and len(in_flight) < limit:
                    task = queue.pop()
                    in_flight[remote.remote(config_ref, task)] = task
                done, _ = ray.wait(list(in_flight), num_returns=1)
                for ref in done:
                    task = in_flight.pop(ref)
                    yield task, ray.get(ref)
        finally:
            for ref in in_flight:
                ray.cancel(ref)


def import_ray():
    try:
        import ray
    except ImportError as err:
        raise ImportError("--executor ray needs Ray: pip install 'invsolve[distributed]' "
                          "(or use --executor local --workers N)") from err
    return ray


def make_executor(name: str, workers: int = 1, threads: int | None = None, address: str | None = None,
                  gpus_per_task: float | None = None):
    """``local`` (``workers`` processes) or ``ray`` (optionally joining ``address``)."""
    if name == "local":
        if address is not None:
            raise ConfigError("--address is for --executor ray")
        return LocalExecutor(workers, threads)
    if name == "ray":
        return RayExecutor(address=address, gpus_per_task=gpus_per_task, threads=threads or 1)
    raise ConfigError(f"unknown executor {name!r}; choose 'local' or 'ray'")
