"""Adapters between robust_envs envs and learning libraries."""

from robust_envs.wrappers.sb3 import SB3VecEnvAdapter, make_sb3_vec_env, unbatch_info

__all__ = ["SB3VecEnvAdapter", "make_sb3_vec_env", "unbatch_info"]
