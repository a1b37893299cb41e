"""nn.Modules over the kernel ops: one mixer per mechanism, HybridLM, build_model()."""
from .hybrid import MIXERS, DecodeCache, HybridLM, build_mixer, build_model, cache_state_bytes, load_config

__all__ = ["HybridLM", "DecodeCache", "build_model", "build_mixer", "cache_state_bytes", "load_config",
           "MIXERS"]
