"""milvus-lite specifics: lite detection, one writer thread per file in a process, and its file lock.

pymilvus is synchronous, so the calls of a store run on worker threads. A milvus-lite file gets ONE
thread, shared by every store of the process that opens the same file: milvus-lite silently lost rows
under concurrent writes from several threads, and one writer thread makes that impossible. A store of a
Milvus server gets its own pool of threads (the server takes concurrent calls).

milvus-lite runs in-process (a gRPC server on a thread) and holds an exclusive lock on its data
directory: a second *process* cannot open the same file; a second client in the same process shares the
server. Releasing the last worker of a file here releases the file.
"""

from __future__ import annotations

import asyncio
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field


@dataclass
class _Worker:
    """The threads that talk to a store: one, shared by every VectorStore of a milvus-lite file; a pool
    of its own for a store of a Milvus server."""

    executor: ThreadPoolExecutor
    users: int = 0
    dirty: set[str] = field(default_factory=set)  # lite collections written since their last flush


_LITE_WORKERS: dict[str, _Worker] = {}
_LITE_WORKERS_LOCK = threading.Lock()


def _is_lite(uri: str) -> bool:
    return uri.endswith(".db")  # pymilvus's own rule for a milvus-lite URI


def _lite_file_locked(path: str) -> bool:
    """True when another process holds milvus-lite's lock on ``path`` (only meaningful when this process
    does not hold it itself)."""
    import fcntl

    lock_path = os.path.join(path, "LOCK")
    if not os.path.exists(lock_path):
        return False
    fd = os.open(lock_path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def _acquire_worker(uri: str, *, lite: bool, threads: int = 1) -> _Worker:
    """The worker of a new store: the shared one-thread worker of a milvus-lite file (``uri`` absolute),
    else a pool of ``threads`` of its own."""
    if not lite:
        return _Worker(ThreadPoolExecutor(max_workers=threads, thread_name_prefix="milvus"), users=1)
    with _LITE_WORKERS_LOCK:
        worker = _LITE_WORKERS.get(uri)
        if worker is None:
            worker = _Worker(ThreadPoolExecutor(max_workers=1, thread_name_prefix="milvus-lite"))
            _LITE_WORKERS[uri] = worker
        worker.users += 1
    return worker


async def _release_worker(uri: str, worker: _Worker, *, lite: bool) -> None:
    """A store is closed: the last user of a milvus-lite file releases the file and its thread."""
    if not lite:
        worker.executor.shutdown(wait=False)
        return
    with _LITE_WORKERS_LOCK:
        worker.users -= 1
        last = worker.users == 0
    if not last:
        return

    def release() -> None:
        from milvus_lite.server_manager import server_manager_instance

        server_manager_instance.release_server(uri)  # flushes and releases the file lock
        worker.dirty.clear()

    await asyncio.get_running_loop().run_in_executor(worker.executor, release)
    with _LITE_WORKERS_LOCK:
        # A store opened on the same file meanwhile keeps the worker (its jobs run after the release).
        if worker.users == 0 and _LITE_WORKERS.get(uri) is worker:
            del _LITE_WORKERS[uri]
            worker.executor.shutdown(wait=False)
