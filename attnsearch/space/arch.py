"""ArchConfig: the JSON schema of a hybrid model (dims + one LayerSpec per layer).

Every way of building one (constructor, `from_dict`, `from_json`) raises a single
`ConfigError` (a ValueError) whose message starts with the offending field, e.g.
`layers[2].params.window: must be an integer in [1, 1048576], got 0`.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterable

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .catalogue import ConfigError, mechanism, mechanism_by_code

SCHEMA_VERSION = 1
EXPORT_FORMAT = "attnsearch-export"   # see attnsearch.search.export


def _field_path(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
            continue
        name = str(part)
        if not name or not name.isprintable():      # a user's key with a newline stays one line
            name = repr(name)
        out += f".{name}" if out else name
    return out or "config"


def _config_error(exc: ValidationError) -> ConfigError:
    """The first pydantic error as one line naming the field."""
    err = exc.errors()[0]
    where = _field_path(tuple(err["loc"]))
    inner = (err.get("ctx") or {}).get("error")
    if isinstance(inner, ConfigError):
        msg = str(inner)
        return ConfigError(msg if where == "config" else f"{where}.{msg}")
    if err["type"] == "extra_forbidden":
        return ConfigError(f"{where}: unknown field")
    if err["type"] == "missing":
        return ConfigError(f"{where}: required field is missing")
    return ConfigError(f"{where}: {err['msg']}, got {err.get('input')!r}")


class _Strict(BaseModel):
    """Converts pydantic's ValidationError into one ConfigError however the model is built."""
    model_config = ConfigDict(extra="forbid", frozen=True)

    def __init__(self, **data):
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise _config_error(exc) from None

    @classmethod
    def model_validate(cls, obj, *args, **kwargs):
        try:
            return super().model_validate(obj, *args, **kwargs)
        except ValidationError as exc:
            raise _config_error(exc) from None


class LayerSpec(_Strict):
    """One layer's mixer: mechanism name, its quality params (defaults filled), kernel tunables."""
    mechanism: str
    params: dict[str, Any] = Field(default_factory=dict)
    kernel_config: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _resolve(self):
        try:
            mech = mechanism(self.mechanism)
        except ConfigError as exc:
            raise ConfigError(f"mechanism: {exc}") from None
        # params are stored resolved, so an exported JSON does not depend on today's defaults
        object.__setattr__(self, "params", mech.resolve_params(self.params, "params"))
        object.__setattr__(self, "kernel_config", mech.check_kernel_config(self.kernel_config, "kernel_config"))
        return self

    @property
    def code(self) -> str:
        return mechanism(self.mechanism).code

    @property
    def family(self) -> str:
        return mechanism(self.mechanism).family


def _as_layer(layer) -> LayerSpec:
    if isinstance(layer, LayerSpec):
        return layer
    if isinstance(layer, str):
        return LayerSpec(mechanism=layer)
    if isinstance(layer, dict):
        return LayerSpec(**layer)
    raise ConfigError(f"layers: each layer must be a LayerSpec, dict or mechanism name, got {type(layer).__name__}")


class ArchConfig(_Strict):
    """A hybrid language model: shared dims plus one LayerSpec per layer."""
    schema_version: int = SCHEMA_VERSION
    name: str = ""
    d_model: int = Field(gt=0)
    n_layers: int = Field(gt=0)
    n_heads: int = Field(gt=0)
    head_dim: int = Field(gt=0)
    v_head_dim: int | None = Field(default=None, gt=0)      # None -> head_dim
    mlp_ratio: float = Field(default=8 / 3, gt=0)           # SwiGLU hidden = mlp_ratio * d_model (rounded up to 8)
    vocab_size: int = Field(default=256, gt=0)
    max_seq_len: int = Field(default=8192, gt=0)            # longest sequence; seeded patterns are drawn for it
    norm_eps: float = Field(default=1e-6, gt=0)
    rope_theta: float = Field(default=10000.0, gt=0)
    tie_embeddings: bool = True
    init_std: float = Field(default=0.02, gt=0)
    layers: list[LayerSpec]

    @field_validator("layers", mode="before")
    @classmethod
    def _names_to_layers(cls, layers):
        # a bare mechanism name is shorthand for that mechanism with default params
        if isinstance(layers, (list, tuple)):
            return [{"mechanism": x} if isinstance(x, str) else x for x in layers]
        return layers

    @model_validator(mode="after")
    def _check(self):
        if self.schema_version != SCHEMA_VERSION:
            raise ConfigError(f"schema_version: this code reads version {SCHEMA_VERSION}, got {self.schema_version}")
        if self.v_head_dim is None:
            object.__setattr__(self, "v_head_dim", self.head_dim)
        if len(self.layers) != self.n_layers:
            raise ConfigError(f"layers: expected n_layers={self.n_layers} entries, got {len(self.layers)}")
        return self

    # ------------------------------------------------------------------ derived
    @property
    def mlp_hidden_dim(self) -> int:
        return int(math.ceil(self.mlp_ratio * self.d_model / 8) * 8)

    def layout_string(self) -> str:
        """One letter per layer (see catalogue codes), e.g. 'SSSSSF'."""
        return "".join(layer.code for layer in self.layers)

    def mechanisms(self) -> list[str]:
        return [layer.mechanism for layer in self.layers]

    def state_bytes(self, context_len: int, dtype_bytes: int = 2) -> int:
        """Decode state of the whole model per sequence at context_len (sum of the layers')."""
        return sum(mechanism(layer.mechanism).state_bytes(self, layer.params, context_len, dtype_bytes)
                   for layer in self.layers)

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict:
        return self.model_dump(mode="json")

    def to_json(self, path: str | Path | None = None, indent: int = 2) -> str:
        text = json.dumps(self.to_dict(), indent=indent)
        if path is not None:
            Path(path).write_text(text + "\n")
        return text

    @classmethod
    def from_dict(cls, data: dict) -> "ArchConfig":
        if not isinstance(data, dict):
            raise ConfigError(f"config: must be a JSON object, got {type(data).__name__}")
        if data.get("format") == EXPORT_FORMAT and "arch" in data:
            # an `attnsearch export` file: the ArchConfig wrapped with metrics and provenance
            return cls.from_dict(data["arch"])
        return cls.model_validate(data)

    @classmethod
    def from_json(cls, source: str | Path) -> "ArchConfig":
        """Parse JSON text, or read it from a path (a str not starting with '{' or '[' is a path)."""
        if isinstance(source, Path) or (isinstance(source, str) and not source.lstrip()[:1] in ("{", "[")):
            path = Path(source)
            try:                                     # a name too long or unreadable is one line too
                if not path.is_file():
                    raise ConfigError(f"json: no such config file {str(path)[:200]!r}")
                source = path.read_text()
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigError(f"json: cannot read config file {str(path)[:200]!r} "
                                  f"({getattr(exc, 'strerror', None) or type(exc).__name__})") from None
        try:
            data = json.loads(source)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"json: malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
        return cls.from_dict(data)

    @classmethod
    def from_layout(cls, layout: str, layer_params: dict[str, dict] | None = None, **dims) -> "ArchConfig":
        """Build from a layout string ('SSSF'); `layer_params` maps mechanism name -> params."""
        layer_params = layer_params or {}
        layers = []
        for letter in layout:
            mech = mechanism_by_code(letter)
            layers.append(LayerSpec(mechanism=mech.name, params=layer_params.get(mech.name, {})))
        return cls(n_layers=len(layers), layers=layers, **dims)

    # ------------------------------------------------------------------ derived configs
    def _copy_with(self, **changes) -> "ArchConfig":
        data = self.model_dump()
        data.update(changes)
        return ArchConfig.from_dict(data)

    def with_layers(self, layers: Iterable | str) -> "ArchConfig":
        """Same dims, new per-layer list (n_layers follows its length); a str is a layout string
        ('SSSF': each letter's mechanism with default params)."""
        if isinstance(layers, str):
            layers = [mechanism_by_code(letter).name for letter in layers]
        specs = [_as_layer(layer).model_dump() for layer in layers]
        return self._copy_with(layers=specs, n_layers=len(specs))

    def scaled(self, **changes) -> "ArchConfig":
        """Other dims (d_model=, n_layers=, n_heads=, head_dim=, ...), same mechanism choices.

        When the depth changes the layer pattern is tiled (layer i takes layer i mod old depth),
        so a 24-layer '5 sliding : 1 full' layout stays 5:1 at 12 or 6 layers. v_head_dim
        follows head_dim when it was equal to it and is not given.
        """
        if "layers" in changes:
            raise ConfigError("layers: use with_layers() to change the per-layer list")
        if "head_dim" in changes and "v_head_dim" not in changes and self.v_head_dim == self.head_dim:
            changes["v_head_dim"] = changes["head_dim"]
        n = changes.get("n_layers", self.n_layers)
        if not isinstance(n, int) or n <= 0:
            raise ConfigError(f"n_layers: must be a positive integer, got {n!r}")
        layers = [self.layers[i % self.n_layers].model_dump() for i in range(n)]
        return self._copy_with(layers=layers, **changes)
