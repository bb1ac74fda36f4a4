"""How fast a simulated engine is, and how big: an engine profile.

A profile is a YAML file (``config/engine-profiles/``) that :class:`EngineProfile`
validates. ``make calibrate`` measures one from the real engine on this machine
(:mod:`benchmarks.calibrate`); a GPU profile built from published figures ships too,
marked ``source: assumed``. The step-time model is linear, as vLLM's own step costs are to
first order and as llm-d's BLIS and Vidur fit them:

    step = step_ms + prefill_ms_per_token * prefill tokens
                   + prefill_ms_per_1k_context * (sum of those tokens' positions / 1000)
                   + decode_ms_per_seq * decoding sequences
                   + decode_ms_per_1k_context * (their context tokens / 1000)

The position term is attention's: a prompt token attends to every token before it, so a
long prompt costs more per token than a short one (measured here: 1.8 ms a token at 256
tokens, 2.7 ms at 2,048). What the model leaves out: sampling options,
CUDA-graph batch padding, and a model's reply length (a simulated reply runs to its
``max_tokens``). docs/scaling.md says what that means for the results.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from deployments.config.base import StrictModel

PROFILES_DIR = Path(__file__).resolve().parents[2] / "config" / "engine-profiles"
"""Where the shipped profiles are; ``model.simulated.profile`` may name one by its file stem."""


class EngineProfile(BaseModel):
    """One engine's speed and sizes (the module docstring has the step-time model)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="What engine and hardware this profile describes.")
    source: Literal["measured", "assumed"] = Field(
        description="'measured': fitted by `make calibrate` on the machine it names; 'assumed': from published figures.")
    notes: str = Field(default="", description="Where the numbers come from.")
    block_size: int = Field(ge=1, description="Tokens per KV block (vLLM: 16 on GPUs, 128 on CPUs).")
    kv_cache_blocks: int = Field(ge=1, description="KV blocks of one engine.")
    max_num_seqs: int = Field(ge=1, description="Most sequences in one step's batch.")
    max_num_batched_tokens: int = Field(ge=1, description="Most tokens one step schedules (prefill chunks included).")
    max_model_len: int = Field(ge=16, description="Context length (prompt + output).")
    step_ms: float = Field(ge=0, description="Fixed cost of one engine step, in milliseconds.")
    prefill_ms_per_token: float = Field(ge=0, description="Milliseconds per prompt token computed (not cached).")
    prefill_ms_per_1k_context: float = Field(
        default=0.0, ge=0,
        description="Milliseconds per prompt token computed, per 1,000 tokens before it in its sequence (attention).")
    decode_ms_per_seq: float = Field(ge=0, description="Milliseconds per sequence decoding in the step.")
    decode_ms_per_1k_context: float = Field(
        ge=0, description="Milliseconds per 1,000 tokens of context of the decoding sequences (attention reads).")

    def step_seconds(self, prefill_tokens: int, decode_seqs: int, context_tokens: int,
                     prefill_positions: float = 0.0) -> float:
        """Seconds one engine step takes (the module docstring's model); ``prefill_positions``
        is the sum of the prefilled tokens' positions in their sequences."""
        return (self.step_ms + self.prefill_ms_per_token * prefill_tokens
                + self.prefill_ms_per_1k_context * prefill_positions / 1000.0
                + self.decode_ms_per_seq * decode_seqs + self.decode_ms_per_1k_context * context_tokens / 1000.0) / 1000.0

    def scaled(self, factor: float) -> EngineProfile:
        """This profile with every step taking ``factor`` times as long (``time_scale``)."""
        times = {name: getattr(self, name) * factor for name in type(self).model_fields if "_ms" in name}
        return self.model_copy(update=times)

    def prefill_seconds(self, tokens: int) -> float:
        """One step that prefills a ``tokens``-long prompt from its start."""
        return self.step_seconds(tokens, 0, 0, tokens * (tokens - 1) / 2)


def profile_path(name_or_path: str) -> Path:
    """A shipped profile's file by stem (``cpu-smollm2-135m``), else ``name_or_path`` as a path."""
    shipped = PROFILES_DIR / f"{name_or_path}.yaml"
    if "/" not in name_or_path and not name_or_path.endswith(".yaml") and shipped.is_file():
        return shipped
    return Path(name_or_path)


def load_profile(name_or_path: str) -> EngineProfile:
    """The profile a shipped name or a file path names; ValueError saying what is wrong."""
    path = profile_path(name_or_path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        shipped = sorted(p.stem for p in PROFILES_DIR.glob("*.yaml"))
        raise ValueError(f"engine profile {name_or_path!r}: {exc.strerror} ({path}); shipped: {shipped}") from None
    except yaml.YAMLError as exc:
        raise ValueError(f"engine profile {path}: not YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"engine profile {path}: a mapping of fields expected")
    return EngineProfile.model_validate(data)


def write_profile(profile: EngineProfile, path: Path) -> None:
    """Write ``profile`` as YAML, fields in declaration order."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(profile.model_dump(), sort_keys=False, width=100))


class SimulatedEngineConfig(StrictModel):
    """A simulated engine instead of vLLM: each engine replica batches, caches and evicts
    as vLLM does and takes the time an engine profile says, without a model
    (docs/scaling.md#the-simulated-engine)."""

    profile: str = Field(
        default="cpu-smollm2-135m",
        description="The engine profile: a shipped one by name (config/engine-profiles/<name>.yaml) or a YAML "
                    "file's path. `make calibrate` measures one.",
    )
    time_scale: float = Field(
        default=1.0, gt=0.0, le=1000.0,
        description="Each simulated engine step lasts this many times its profiled time: above 1 slows the engines "
                    "down, so that many of them on one machine do not outrun the serving layer.",
    )
    kv_cache_blocks: int | None = Field(
        default=None, ge=1, description="KV blocks of each simulated engine. None: the profile's.")

    _profile: Any = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _profile_exists(self) -> SimulatedEngineConfig:
        try:
            self._profile = load_profile(self.profile)
        except ValidationError as exc:
            raise ValueError(f"profile {self.profile!r}: {exc}") from None
        return self

    @property
    def engine_profile(self) -> Any:
        """The loaded :class:`~deployments.config.engine_profile.EngineProfile`."""
        if self._profile is None:  # a copy that lost its private state: read the file again
                self._profile = load_profile(self.profile)
        return self._profile
