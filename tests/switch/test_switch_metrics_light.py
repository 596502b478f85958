"""The light per-request metrics expose exactly what prometheus_client's own would."""

from __future__ import annotations

import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from switch.metrics import HSM_BUCKETS_S, LightCounter, LightHistogram


def exposition(registry: CollectorRegistry) -> list[str]:
    """The text exposition without the ``_created`` series (the light metrics have none)."""
    text = generate_latest(registry).decode()
    return [line for line in text.splitlines() if "_created" not in line]


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["verify_mac", "generate_mac", "verify_pin_pvv"]),
            st.one_of(
                st.sampled_from(HSM_BUCKETS_S),  # on a bound: counts in that bucket (le)
                st.floats(min_value=0, max_value=5, allow_nan=False),
            ),
        ),
        max_size=40,
    )
)
def test_light_histogram_exposes_what_a_prometheus_histogram_does(
    observations: list[tuple[str, float]],
) -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    light = LightHistogram("h_seconds", "doc", ["command"], HSM_BUCKETS_S, registry=ours)
    reference = Histogram("h_seconds", "doc", ["command"], buckets=HSM_BUCKETS_S, registry=theirs)
    for command, value in observations:
        light.observe(value, (command,))
        reference.labels(command).observe(value)
    assert exposition(ours) == exposition(theirs)


def test_light_counter_exposes_what_a_prometheus_counter_does() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    light = LightCounter("requests", "doc", ["mti", "code"], registry=ours)
    reference = Counter("requests", "doc", ["mti", "code"], registry=theirs)
    for labels in [("0200", "00"), ("0200", "55"), ("0200", "00"), ("0800", "00")]:
        light.inc(labels)
        reference.labels(*labels).inc()
    assert exposition(ours) == exposition(theirs)
    assert 'requests_total{code="00",mti="0200"} 2.0' in exposition(ours)


def test_light_metrics_refuse_wrong_labels_and_buckets() -> None:
    registry = CollectorRegistry()
    histogram = LightHistogram("h", "doc", ["flow"], (0.1, 1.0), registry=registry)
    with pytest.raises(ValueError, match="labels"):
        histogram.observe(0.5, ())
    with pytest.raises(ValueError, match="labels"):
        LightCounter("c", "doc", ["a"], registry=registry).inc(("x", "y"))
    with pytest.raises(ValueError, match="increasing"):
        LightHistogram("h2", "doc", [], (1.0, 0.5), registry=registry)


def test_light_histogram_loses_no_count_across_threads() -> None:
    registry = CollectorRegistry()
    histogram = LightHistogram("h", "doc", [], (0.001, 0.01), registry=registry)
    per_thread, threads = 20_000, 4

    def work() -> None:
        for _ in range(per_thread):
            histogram.observe(0.005)

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert registry.get_sample_value("h_count") == per_thread * threads
    assert registry.get_sample_value("h_bucket", {"le": "0.01"}) == per_thread * threads


def test_unlabelled_histogram_shows_zeros_before_any_observation() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    LightHistogram("batch", "doc", [], (1, 2, 4, 1e6, float("inf")), registry=ours)
    Histogram("batch", "doc", buckets=(1, 2, 4, 1e6, float("inf")), registry=theirs)
    assert exposition(ours) == exposition(theirs)  # "+Inf" once, "1e+06" as prometheus writes it
    assert 'batch_bucket{le="1e+06"} 0.0' in exposition(ours)


def test_light_metrics_refuse_a_le_label_and_a_negative_count() -> None:
    registry = CollectorRegistry()
    with pytest.raises(ValueError, match="bucket label"):
        LightHistogram("h", "doc", ["le"], (1.0,), registry=registry)
    with pytest.raises(ValueError, match="only goes up"):
        LightCounter("c", "doc", [], registry=registry).inc((), -1)
