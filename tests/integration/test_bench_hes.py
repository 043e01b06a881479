"""``bench --hes`` runs tiny end to end: a real receiver child, real HTTP; only the results' shape is checked."""

from __future__ import annotations

import pytest

from wmbus_stream import bench_hes

pytestmark = pytest.mark.integration


def test_the_hes_benchmark_measures_both_twins_and_their_counts_agree() -> None:
    result = bench_hes.run(lines=200, max_body_mib=2, big_mib=1, as_json=True)
    assert result["lines"] == 200 and result["cpu"] and result["cores"]
    measured = [row for row in result["twins"].values() if "unavailable" not in row]
    assert measured and result["twins"]["pure"]["implementation"] == "pure"
    for row in measured:
        assert (row["report"]["lines"], row["report"]["new_readings"]) == (200, 200)
        assert (row["retry"]["lines"], row["retry"]["new_readings"]) == (200, 0)
        big = row["near_limit"]
        assert big["lines"] == big["new_readings"] > 200 and big["body_bytes"] <= 1024 * 1024
        assert row["peak_rss_kib"] >= row["peak_rss_kib_before_near_limit"] > 0
        assert row["receiver_exit"] == 0
        for post in (row["report"], row["retry"], big):
            assert post["cpu_seconds"] >= 0 and post["wall_seconds"] > 0
    assert "CPU us/reading" in bench_hes.table(result)
