"""The benchmark runs both twins on the same frames and they agree on what they accept."""

from wmbus_stream import bench


def test_bench_measures_both_twins_and_they_agree():
    result = bench.run(frames=2000, as_json=True)
    twins = result["twins"]
    assert result["frames"] >= 2000
    assert twins["pure"]["check_batch_per_s"] > 0
    assert 0 < twins["pure"]["accepted"] < result["frames"]  # the filter both accepts and rejects
    if "accepted" in twins["compiled"]:  # absent when the pure twins are forced
        assert twins["compiled"]["accepted"] == twins["pure"]["accepted"]
        assert twins["compiled"]["check_batch_per_s"] > 0
