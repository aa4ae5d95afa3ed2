"""Adapters between robust_envs envs and learning libraries."""

from robust_envs.wrappers.sb3 import SB3VecEnvAdapter, make_sb3_vec_env, unbatch_info
from robust_envs.wrappers.torch_vector import TorchVectorEnv

__all__ = ["SB3VecEnvAdapter", "TorchVectorEnv", "make_sb3_vec_env", "unbatch_info"]
