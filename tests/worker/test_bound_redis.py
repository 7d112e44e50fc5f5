"""A thread-bound Redis client against a real Redis: each thread keeps one connection (the
server sees one client id per thread, the same for all its commands), gives it back to the pool
when it ends or closes the client, and a forked child never speaks on its parent's socket."""

from __future__ import annotations

import os
import threading

import pytest

from worker.bound_redis import ThreadBoundRedis


@pytest.fixture
def client(redis_url: str) -> ThreadBoundRedis:
    return ThreadBoundRedis.from_url(redis_url)


def _ids_in_threads(client: ThreadBoundRedis, threads: int) -> list[list[int]]:
    seen: list[list[int]] = [[] for _ in range(threads)]

    def run(n: int) -> None:
        seen[n] = [client.client_id() for _ in range(3)]

    workers = [threading.Thread(target=run, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return seen


def test_each_thread_runs_every_command_on_its_own_connection(client: ThreadBoundRedis) -> None:
    seen = _ids_in_threads(client, 4)

    assert all(len(set(ids)) == 1 for ids in seen)  # one connection for all of a thread's
    assert len({ids[0] for ids in seen}) == 4  # and one per thread


def test_an_ended_thread_gives_its_connection_back(client: ThreadBoundRedis) -> None:
    pool = client.connection_pool
    first = _ids_in_threads(client, 2)

    assert len(pool._in_use_connections) == 0  # type: ignore[attr-defined]
    again = _ids_in_threads(client, 2)
    assert {ids[0] for ids in again} == {ids[0] for ids in first}  # reused, not reconnected


def test_close_gives_back_the_calling_threads_connection(client: ThreadBoundRedis) -> None:
    client.ping()
    client.close()

    assert len(client.connection_pool._in_use_connections) == 0  # type: ignore[attr-defined]
    assert client.ping()


def test_a_forked_child_opens_its_own_connection(client: ThreadBoundRedis) -> None:
    parent = client.client_id()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its client id, never return into pytest
        try:
            os.write(write, str(client.client_id()).encode())
        finally:
            os._exit(0)
    os.close(write)
    child = int(os.read(read, 64).decode())
    os.waitpid(pid, 0)

    assert child != parent
    assert client.client_id() == parent  # the parent's connection is untouched
