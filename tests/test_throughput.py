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
