"""The training protocol: every rule a run is trained under, as one serialisable config."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from cbgrid import pipeline


@dataclass
class TrainConfig:
    """The training protocol (defaults: the published CarbonBench protocol)."""

    model: str
    split: str = "koppen"  # split name: picks the published hyperparameters
    feature_set: str = "minimal"
    seeds: int = 10
    first_seed: int = 0
    max_epochs: int = 100
    patience: int = 20  # epochs (networks) or boosting rounds (trees) without improvement
    batch_size: int = 256
    alpha: float = 0.1  # weight of the physical carbon-balance term
    window: int = pipeline.WINDOW
    horizon: int = pipeline.HORIZON
    stride: int = pipeline.STRIDE
    min_target_days: int = 1  # a window needs this many observed days among its last `horizon`
    val_fraction: float = 0.2  # last part of each training site's record used for early stopping
    context_windows: int = 8  # feature windows per sample for models that need site context
    device: str = "auto"
    hparams: dict = field(default_factory=dict)  # overrides of the published hyperparameters
    threads: int | None = None  # CPU threads for torch and the trees (None: library defaults)

    @property
    def windows(self) -> pipeline.WindowSpec:
        """The window rules as one serialisable spec."""
        return pipeline.WindowSpec(self.window, self.horizon, self.stride, self.min_target_days, self.context_windows)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})
