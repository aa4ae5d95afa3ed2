"""benchmarks/throughput.py on the tiny UNet: the paired pool timing and the episode floor's parts."""

from __future__ import annotations

from benchmarks import throughput as tp
from robust_envs.envs.ddim_sigma import DDIMSigmaVectorEnv


def test_paired_pool_timing_and_floor(kwargs_tiny, one_thread) -> None:
    plain = DDIMSigmaVectorEnv(num_envs=2, **kwargs_tiny)
    pooled = DDIMSigmaVectorEnv(num_envs=2, prefix_pool=2, **kwargs_tiny)
    steps = []
    real_step = pooled.step
    pooled.step = lambda a: steps.append(1) or real_step(a)  # type: ignore[method-assign]
    batched, pooled_rate = tp.paired_episodes_per_second(plain, pooled, 2, kwargs_tiny["t_c"], 0)
    assert batched > 0 and pooled_rate > 0 and len(steps) == 2 * kwargs_tiny["t_c"]
    floor = tp.episode_floor({**kwargs_tiny, "stride": kwargs_tiny["stride"]}, 2, repeats=1)
    assert floor["episode_s"] == floor["prefix_s"] + floor["steps_s"] and floor["prefix_s"] > 0


def test_pool_startup_reads_back_the_pool_it_wrote(kwargs_tiny, one_thread, monkeypatch) -> None:
    """The start-up row times a first reset that computes the whole pool and one that reads it from the folder:
    the second must not run the network's prefix at all (the point of prefix_pool_dir)."""
    from robust_envs.envs import ddim_sigma

    calls = []
    real = ddim_sigma.DDIMSigmaSimulator._prefix
    monkeypatch.setattr(ddim_sigma.DDIMSigmaSimulator, "_prefix", lambda self, g: calls.append(len(g)) or real(self, g))
    row = tp.pool_startup(kwargs_tiny, pool=3, num_envs=2)
    assert row["compute_s"] > 0 and row["read_s"] > 0 and row["file_mb"] > 0
    assert sum(calls) == 3  # the 3 pool entries, computed once; the read-back reset computed none
    data = {"meta": {"argv": "x", "t_c": 2, "stride": 1, "episodes": 1, "evaluator": "e", "model": "m", "hardware": "h",
                     "startup_argv": "--pool-startup 3", "startup_hardware": "h"}, "rows": [], "startup_rows": [row]}  # fmt: skip
    assert "| 3 | 2 |" in tp.render(data) and "--pool-startup 3" in tp.render(data)


def test_startup_only_run_keeps_each_finished_row_after_a_kill(tmp_path, monkeypatch) -> None:
    """`--startup-only --cache-shift` writes the results after every row: a run killed during its second t_c
    keeps the first row (and the tables it did not measure) on disk."""
    import json

    import pytest

    results, doc = tmp_path / "throughput.json", tmp_path / "throughput.md"
    results.write_text(json.dumps({"meta": {"argv": "old", "t_c": 10, "stride": 50, "episodes": 2, "evaluator": "levels",
                                            "model": "embedded", "hardware": "h"}, "rows": [{"num_envs": 1, "batched": 1.0,
                                            "sync": 1.0, "floor": 2.0}]}))  # fmt: skip
    monkeypatch.setattr(tp, "RESULTS", results)
    monkeypatch.setattr(tp, "DOC", doc)

    def fake_row(kwargs, num_envs, pool, episodes):
        if kwargs["t_c"] == 60:
            raise KeyboardInterrupt  # the kill, during the second row
        return {"t_c": kwargs["t_c"], "num_envs": num_envs, "pool": pool, "attack": "shift",
                "attack_budget": kwargs["attack_budget"], "pooled": 1.0, "cached": 2.0}  # fmt: skip

    monkeypatch.setattr(tp, "baseline_cache_row", fake_row)
    with pytest.raises(KeyboardInterrupt):
        tp.main(["--startup-only", "--cache-shift", "20", "--pool-t-c", "20", "60"])
    data = json.loads(results.read_text())
    assert [r["t_c"] for r in data["cache_rows"]] == [20] and data["rows"][0]["sync"] == 1.0
    assert "--cache-shift 20" in data["meta"]["cache_argv"] and doc.is_file()
