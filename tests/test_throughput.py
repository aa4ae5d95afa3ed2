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
