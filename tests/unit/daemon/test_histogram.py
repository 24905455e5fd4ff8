from dcsched.daemon.histogram import Histogram


def test_buckets_are_cumulative_and_a_bound_is_inclusive() -> None:
    h = Histogram([1.0, 5.0])
    for v in (0.5, 1.0, 3.0, 5.0, 7.0):
        h.observe(v)
    assert h.cumulative() == [(1.0, 2), (5.0, 4), (float("inf"), 5)]
    assert (h.count, h.sum) == (5, 16.5)


def test_an_empty_histogram_has_every_bucket_at_zero() -> None:
    assert Histogram([2.0, 1.0]).cumulative() == [(1.0, 0), (2.0, 0), (float("inf"), 0)]
