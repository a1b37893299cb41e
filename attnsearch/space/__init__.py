"""What an architecture is: the mechanism catalogue, ArchConfig (the JSON schema), presets.

(`search_space.py`, the SearchSpace file format, lives here too and is imported on its own.)
"""
from .arch import SCHEMA_VERSION, ArchConfig, LayerSpec
from .catalogue import MECHANISMS, ConfigError, Cost, Mechanism, ParamSpec, mechanism, mechanism_by_code
from .presets import PRESETS, Preset, preset

__all__ = ["ArchConfig", "LayerSpec", "SCHEMA_VERSION", "MECHANISMS", "Mechanism", "ParamSpec", "Cost",
           "ConfigError", "mechanism", "mechanism_by_code", "PRESETS", "Preset", "preset"]
