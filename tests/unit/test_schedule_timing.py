"""Schedule timing, no services: cron across time zones and DST, intervals, one-offs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from opsq import schedules
from opsq.store.models import ScheduleKind


def test_cron_next_run_across_time_zones_and_dst():
    paris = schedules.Timing(ScheduleKind.CRON, "30 2 * * *", "Europe/Paris")
    # 2026-03-29: clocks jump 02:00 -> 03:00 in Paris; 02:30 does not exist that day.
    before = datetime(2026, 3, 28, 12, 0, tzinfo=UTC)
    first = paris.next_after(before)
    assert first == datetime(2026, 3, 29, 1, 0, tzinfo=UTC)  # 03:00 CEST
    assert paris.next_after(first) == datetime(2026, 3, 30, 0, 30, tzinfo=UTC)
    ny = schedules.Timing(ScheduleKind.CRON, "0 9 * * 1-5", "America/New_York")
    friday_evening = datetime(2026, 11, 27, 23, 0, tzinfo=UTC)
    assert ny.next_after(friday_evening) == datetime(2026, 11, 30, 14, 0, tzinfo=UTC)
    utc = schedules.Timing(ScheduleKind.CRON, "*/15 * * * *", "UTC")
    assert utc.next_after(datetime(2026, 1, 1, 10, 7, tzinfo=UTC)) == \
        datetime(2026, 1, 1, 10, 15, tzinfo=UTC)
    every = schedules.Timing(ScheduleKind.INTERVAL, "10.0")
    prev = datetime(2026, 1, 1, 0, 0, 0, tzinfo=UTC)
    assert every.next_after(prev + timedelta(seconds=35), prev) == prev + timedelta(seconds=40)


def test_interval_and_at_parsing():
    assert schedules.parse_every("30s") == 30
    assert schedules.parse_every("10m") == 600
    assert schedules.parse_every("2h") == 7200
    assert schedules.parse_every("1.5d") == 129600
    t = schedules.timing(at="2036-12-01T09:00", tz="Europe/Paris")
    assert t.expression == "2036-12-01T08:00:00+00:00"
