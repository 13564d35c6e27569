"""How a total's window is split into rollup buckets and points (`sql.cover`), exactly."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from runner_fs.storage.sql import DAY_US, FIVE_MINUTES_US, HOUR_US, SPANS_US, cover

MINUTE_US = 60_000_000
# Any microsecond or any minute, over two months either side of the epoch.
instants = st.one_of(
    st.integers(-60 * DAY_US, 60 * DAY_US),
    st.integers(-60 * 1440, 60 * 1440).map(lambda minute: minute * MINUTE_US),
)


def _coverage(buckets, edges, instant):
    """Return how many times the signed parts count `instant`."""
    counted = [sign for sign, _, first, end in buckets if first <= instant < end]
    counted += [sign for sign, low, high in edges if low <= instant < high]
    return sum(counted)


@given(instants, instants, st.data())
def test_every_instant_of_the_window_is_counted_once_and_no_other(low, high, data):
    low, high = min(low, high), max(low, high)
    buckets, edges = cover(low, high)
    boundaries = {low, high} | {bound for _, _, *bounds in buckets for bound in bounds}
    boundaries |= {bound for _, *bounds in edges for bound in bounds}
    # Every part starts and ends at one of these: checking each side of each is exhaustive.
    for instant in {moment + step for moment in boundaries for step in (-1, 0)}:
        assert _coverage(buckets, edges, instant) == (1 if low <= instant < high else 0)
    for _, span, first, end in buckets:
        assert span in SPANS_US and first % span == 0 and end % span == 0 and first < end
    assert all(low < high for _, low, high in edges)


@given(instants, instants)
def test_each_end_scans_at_most_half_of_five_minutes_of_points(low, high):
    low, high = min(low, high), max(low, high) + 2 * FIVE_MINUTES_US
    _, edges = cover(low, high)
    assert len(edges) <= 2
    assert all(high - low <= FIVE_MINUTES_US // 2 for _, low, high in edges)


def test_a_local_month_reads_days_and_a_few_hours_and_five_minutes_at_each_end():
    minus_0330 = 3 * HOUR_US + 30 * MINUTE_US  # midnight at -03:30 is 03:30 UTC
    buckets, edges = cover(minus_0330, 28 * DAY_US + minus_0330)
    assert buckets == [
        (1, DAY_US, 0, 28 * DAY_US),
        (-1, HOUR_US, 0, 4 * HOUR_US),  # the first day's hours before 04:00, taken away
        (1, FIVE_MINUTES_US, minus_0330, 4 * HOUR_US),  # and 03:30-04:00 given back
        (1, HOUR_US, 28 * DAY_US, 28 * DAY_US + 4 * HOUR_US),
        (-1, FIVE_MINUTES_US, 28 * DAY_US + minus_0330, 28 * DAY_US + 4 * HOUR_US),
    ]
    assert edges == []


def test_an_empty_window_has_no_parts():
    assert cover(HOUR_US, HOUR_US) == ([], [])
