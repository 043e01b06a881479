"""The benchmark runs the daemon's receive path on both twins, and they store the same."""

from wmbus_stream import bench


def test_bench_measures_the_daemon_path_on_both_twins_and_they_agree():
    result = bench.run(frames=2000, as_json=True)
    twins = result["twins"]
    pure = twins["pure"]
    assert result["frames"] == 2000 and pure["telegrams"] == 2000 and pure["implementation"] == "pure"
    assert 0 < pure["ok"] < pure["telegrams"] and pure["ok"] + pure["filtered"] == pure["telegrams"]
    assert pure["meters_stored"] == pure["ok"]  # every accepted telegram reached the store (2,000 distinct meters)
    assert pure["us_per_telegram"] > 0 and len(pure["cpu_seconds"]) == bench.REPEATS
    assert result["cpu"] and result["cores"]
    if "unavailable" not in twins["compiled"]:  # present unless the pure twins are forced
        compiled = twins["compiled"]
        assert compiled["implementation"] == "compiled"
        assert (compiled["ok"], compiled["filtered"], compiled["meters_stored"]) == (
            pure["ok"], pure["filtered"], pure["meters_stored"])
        assert result["crc_loop_us_per_frame"] > 0
        assert compiled["x_crc_loop"] == round(compiled["us_per_telegram"] / result["crc_loop_us_per_frame"], 1)
        assert pure["x_crc_loop"] > 0
