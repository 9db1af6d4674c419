"""ReplicaSet and AttemptPlan with a hand-driven clock: rotation, skipping, the one probe, the per-attempt choice."""

from __future__ import annotations

import logging
import threading

import httpx
import pytest

from search_r1_oai.config import Settings
from search_r1_oai.context import RolloutContext
from search_r1_oai.replicas import (
    DEFAULT_SKIP_S,
    AttemptPlan,
    ReplicaSet,
    means_replica_down,
)

A, B, C = "http://a:1", "http://b:2", "http://c:3"


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def replicas(clock: Clock, *urls: str) -> ReplicaSet:
    return ReplicaSet(urls or (A, B), skip_s=5.0, clock=clock)


def status_error(status: int) -> httpx.HTTPStatusError:
    request = httpx.Request("POST", A + "/retrieve")
    return httpx.HTTPStatusError("x", request=request, response=httpx.Response(status, request=request))


def test_order_rotates_over_every_replica(clock: Clock) -> None:
    rs = replicas(clock, A, B, C)
    orders = [rs.order() for _ in range(3)]
    assert orders == [[A, B, C], [B, C, A], [C, A, B]]


def test_urls_are_deduplicated_and_stripped(clock: Clock) -> None:
    assert ReplicaSet([A + "/", A, B], clock=clock).urls == (A, B)
    assert ReplicaSet([]).order() == []


def test_a_marked_replica_goes_last_for_everyone_until_its_skip_ends(clock: Clock) -> None:
    rs = replicas(clock)
    rs.mark_down(A)
    assert rs.is_skipped(A) and not rs.is_skipped(B)
    assert [rs.order() for _ in range(4)] == [[B, A]] * 4
    clock.now += 4.9
    assert rs.order()[0] == B


def test_after_the_skip_exactly_one_caller_probes(clock: Clock) -> None:
    rs = replicas(clock)
    rs.mark_down(A)
    clock.now += 5.0
    probe = rs.order()
    assert probe[0] == A, "the first caller after the skip tries the replica first"
    assert [rs.order() for _ in range(3)] == [[B, A]] * 3, "the others keep skipping it while it is probed"
    assert rs.is_skipped(A)


def test_a_failed_probe_skips_again_and_a_successful_one_ends_the_skip(clock: Clock) -> None:
    rs = replicas(clock)
    rs.mark_down(A)
    clock.now += 5.0
    assert rs.order()[0] == A
    rs.record_failure(A, httpx.ConnectError("refused"))
    clock.now += 4.9
    assert rs.is_skipped(A) and rs.order() == [B, A]
    clock.now += 0.1
    assert rs.order()[0] == A
    rs.record_success(A)
    assert not rs.is_skipped(A)
    assert sorted(rs.order()[0] for _ in range(4)) == [A, A, B, B], "back in the rotation at once"


def test_a_probe_that_reports_nothing_puts_the_replica_back_after_a_skip_period(clock: Clock) -> None:
    """e.g. the probe timed out: a timeout does not mean down, and the replica must not stay out for good."""
    rs = replicas(clock)
    rs.mark_down(A)
    clock.now += 5.0
    assert rs.order()[0] == A
    rs.record_failure(A, httpx.ReadTimeout("slow"))
    clock.now += 4.9
    assert rs.is_skipped(A)
    clock.now += 0.1
    assert not rs.is_skipped(A)
    assert sorted(rs.order()[0] for _ in range(4)) == [A, A, B, B]


@pytest.mark.parametrize(
    ("error", "down"),
    [
        (httpx.ConnectError("refused"), True),
        (httpx.ConnectTimeout("no route"), True),
        (status_error(503), True),
        (httpx.ReadTimeout("slow"), False),
        (status_error(500), False),
        (status_error(422), False),
        (httpx.RemoteProtocolError("closed"), False),
    ],
    ids=repr,
)
def test_only_refusals_and_503_mark_a_replica_down(clock: Clock, error: Exception, down: bool) -> None:
    assert means_replica_down(error) is down
    rs = replicas(clock)
    rs.record_failure(A, error)
    assert rs.is_skipped(A) is down


def test_marks_survive_an_update_for_urls_still_listed(clock: Clock) -> None:
    rs = replicas(clock, A, B, C)
    rs.mark_down(A)
    rs.mark_down(C)
    rs.update([A, B])
    assert rs.urls == (A, B) and rs.is_skipped(A) and not rs.is_skipped(C)
    rs.mark_down("http://unknown:9")
    assert not rs.is_skipped("http://unknown:9")


def test_going_down_and_coming_back_are_logged_once(clock: Clock, caplog: pytest.LogCaptureFixture) -> None:
    rs = replicas(clock)
    with caplog.at_level(logging.WARNING, logger="search_r1_oai.replicas"):
        rs.record_failure(A, status_error(503))
        rs.record_failure(A, status_error(503))
        clock.now += 5.0
        rs.order()
        rs.record_failure(A, httpx.ConnectError("refused"))
        rs.record_success(A)
        rs.record_success(A)
    messages = [record.getMessage() for record in caplog.records]
    assert messages == [f"replica {A} is skipped for 5 s (HTTP 503)", f"replica {A} answers again"]


def test_plan_moves_from_a_replica_that_failed_and_stays_on_the_live_one(clock: Clock) -> None:
    rs = replicas(clock)
    rs.order()  # the next plan's rotation starts at B
    plan = AttemptPlan(rs)
    assert plan(0) == B
    rs.record_failure(B, httpx.ConnectError("refused"))
    assert [plan(i) for i in (1, 2, 3)] == [A, A, A]
    assert plan.tried == [B, A, A, A]


def test_plan_alternates_when_no_replica_is_marked(clock: Clock) -> None:
    """A 500 or a timeout marks nothing: the retries spread over the replicas, least tried first."""
    plan = replicas(clock, A, B, C).plan()
    assert [plan(i) for i in range(5)] == [A, B, C, A, B]


def test_plan_still_tries_skipped_replicas_when_all_are(clock: Clock) -> None:
    rs = replicas(clock)
    plan = rs.plan()
    assert plan(0) == A
    rs.mark_down(A)
    assert plan(1) == B
    rs.mark_down(B)
    assert [plan(i) for i in (2, 3)] == [A, B]


def test_plan_with_one_replica_retries_it() -> None:
    rs = ReplicaSet([A])
    plan = rs.plan()
    rs.mark_down(A)
    assert [plan(i) for i in range(3)] == [A, A, A]
    with pytest.raises(ValueError, match="no replica"):
        ReplicaSet([]).plan()


def test_one_dead_replica_of_two_costs_at_most_one_attempt_per_skip_period(clock: Clock) -> None:
    """The issue's case, with a simulated dead replica: 1000 calls, each retried until it reaches the live one."""
    rs = replicas(clock)
    failed_attempts = 0
    for _ in range(1000):
        plan = rs.plan()
        for attempt in range(4):
            url = plan(attempt)
            if url == B:
                rs.record_success(B)
                break
            failed_attempts += 1
            rs.record_failure(A, httpx.ConnectError("refused"))
        else:
            pytest.fail("a call never reached the live replica")
        clock.now += 0.01  # 1000 calls over 10 s: two skip periods
    assert failed_attempts <= 3


def test_a_rollout_context_has_one_set_of_retriever_replicas() -> None:
    """Every search of a process's rollouts shares what any of them learned about a replica."""
    context = RolloutContext(Settings(retrieval_urls=("http://x:1", "http://y:2/")), None, "http://policy:1")
    first = context.tools["search"].client.replicas
    assert context.tools["search"].client._replicas is first and context.tools["search"].client.replicas is first
    other = RolloutContext(Settings(retrieval_urls=("http://x:1",)), None, "http://p:1")
    assert other.tools["search"].client.replicas is not first
    assert first.urls == ("http://x:1", "http://y:2")


def test_concurrent_threads_never_lose_a_probe_or_a_mark() -> None:
    """Every read-modify-write holds the lock: with many threads asking at once, one probe per expiry."""
    clock = Clock()
    rs = ReplicaSet([A, B], skip_s=DEFAULT_SKIP_S, clock=clock)
    rs.mark_down(A)
    clock.now += DEFAULT_SKIP_S
    firsts: list[str] = []
    barrier = threading.Barrier(8)

    def ask() -> None:
        barrier.wait(timeout=10)
        for _ in range(50):
            firsts.append(rs.order()[0])

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert len(firsts) == 400 and firsts.count(A) == 1
