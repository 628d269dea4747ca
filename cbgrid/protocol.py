"""The training protocol: every rule a run is trained and predicted under.

Named protocols live in ``catalogs/protocols.yaml`` (``cbgrid`` — the default — ``reference``,
the reference implementation's rules, and its variants ``reference-b5d643a`` and
``reference-recoded``); :func:`get` returns one as a checked :class:`Protocol`. :class:`TrainConfig` is what a run is asked for: the model, split,
feature set, seeds, the protocol's name and any explicit overrides; ``TrainConfig.resolved()``
fills what was left unset from the protocol. A run records both in its ``config.json``.

>>> get("reference").optimiser, get("reference").batch_size
('adamw', 2048)
>>> TrainConfig(model="ctlstm", protocol="reference").resolved().first_seed
27
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field

import yaml

from cbgrid import catalog, models
from cbgrid.errors import InputError

WINDOW, HORIZON, STRIDE = 30, 15, 15

#: Allowed values of each categorical rule.
CHOICES = {
    "scaling": ("all_days", "fit_rows"),
    "feature_fill": ("forward_fill", "interpolate_modis"),
    "feature_days": ("all", "target_rows"),
    "onehot": ("cbgrid", "reference"),
    "val_rounding": ("ceil", "floor"),
    "class_weights": ("observed_days", "fit_rows"),
    "windows": ("any_target_day", "complete"),
    "window_align": ("axis", "site_history"),
    "test_days": ("tiling", "last_step"),
    "balance": ("physical", "scaled", "none"),
    "optimiser": ("adam", "adamw"),
    "selection": ("weighted", "unweighted"),
    "architectures": ("cbgrid", "reference"),
}
TREE_CHOICES = {
    "inputs": ("numeric", "categorical"),
    "categories": ("names", "frame_codes"),
    "targets": ("physical", "scaled"),
    "weights": ("loss", "qc_clip"),
    "keep": ("best", "library"),
}


@dataclass(frozen=True)
class WindowSpec:
    """How a temporal model sees time: ``window``-day samples every ``stride`` days whose last
    ``horizon`` days are the targets, kept when ``min_target_days`` of those are observed;
    ``context`` feature windows per sample for models that need site context (TAM-RL).

    Serialisable: a run's ``config.json`` records it under ``windows``.

    >>> WindowSpec.from_dict(WindowSpec().to_dict()) == WindowSpec()
    True
    """

    window: int = WINDOW
    horizon: int = HORIZON
    stride: int = STRIDE
    min_target_days: int = 1
    context: int = 8

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> WindowSpec:
        names = {f.name for f in dataclasses.fields(cls)}
        # runs written before the spec had its own entry kept it flat in their train config
        d = {("context" if k == "context_windows" else k): v for k, v in d.items()}
        return cls(**{k: int(v) for k, v in d.items() if k in names and v is not None})


@dataclass(frozen=True)
class Protocol:
    """Every rule of a named protocol (see ``catalogs/protocols.yaml`` for their meaning)."""

    name: str
    description: str
    scaling: str
    feature_fill: str
    feature_days: str
    onehot: str
    val_rounding: str
    class_weights: str
    windows: str
    window_align: str
    test_days: str
    balance: str
    alpha: float
    optimiser: str
    weight_decay: float
    lr_step: int | None
    lr_gamma: float
    max_epochs: int
    patience: int | None
    validate_first: bool
    validate_every: int
    selection: str
    batch_size: int
    first_seed: int
    architectures: str
    tamrl: dict | None
    trees: dict
    min_days: int

    @property
    def reference(self) -> bool:
        """Whether the reference implementation's data rules apply (target rows, complete windows)."""
        return self.feature_days == "target_rows"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def validate_at(self, epoch: int) -> bool:
        """Whether the validation loss is computed after ``epoch`` (1-based)."""
        return (self.validate_first and epoch == 1) or epoch % self.validate_every == 0


@functools.lru_cache(maxsize=1)
def _doc() -> dict:
    with open(catalog.path("protocols.yaml")) as f:
        return yaml.safe_load(f)["protocols"]


def names() -> list[str]:
    """The protocols ``--protocol`` accepts.

    >>> names()
    ['cbgrid', 'reference', 'reference-b5d643a', 'reference-recoded']
    """
    return list(_doc())


def get(name: str) -> Protocol:
    """The protocol ``name``, every rule checked; ValueError naming the bad rule or the known names.

    >>> get("cbgrid").patience
    20
    """
    doc = _doc()
    if name not in doc:
        raise InputError(f"unknown protocol {name!r}; choose one of {', '.join(doc)}")
    rules = dict(doc[name])
    if "base" in rules:  # a variant: its rules over the base's, a dict rule (trees, tamrl) merged key by key
        base = doc[rules.pop("base")]
        rules = {**base, **{k: {**base[k], **v} if isinstance(v, dict) and isinstance(base.get(k), dict) else v
                            for k, v in rules.items()}}
    where = f"catalogs/protocols.yaml: protocol {name!r}"
    fields = {f.name for f in dataclasses.fields(Protocol)} - {"name"}
    missing, unknown = sorted(fields - set(rules)), sorted(set(rules) - fields)
    if missing or unknown:
        raise InputError(f"{where}: missing rule(s) {missing}, unknown rule(s) {unknown}")
    for rule, allowed in CHOICES.items():
        if rules[rule] not in allowed:
            raise InputError(f"{where}: {rule} is {rules[rule]!r}; use one of {', '.join(allowed)}")
    for rule, allowed in TREE_CHOICES.items():
        if rules["trees"].get(rule) not in allowed:
            raise InputError(f"{where}: trees.{rule} is {rules['trees'].get(rule)!r}; use one of {', '.join(allowed)}")
    return Protocol(name=name, **rules)


#: TrainConfig fields whose unset value (None) means "the protocol's".
FROM_PROTOCOL = ("first_seed", "max_epochs", "patience", "batch_size", "alpha")


@dataclass
class TrainConfig:
    """What a run is asked for; fields left None take the protocol's value (``resolved``)."""

    model: str
    split: str = "koppen"  # split name: picks the published hyperparameters
    feature_set: str = "minimal"
    seeds: int = 10
    first_seed: int | None = None
    max_epochs: int | None = None
    patience: int | None = None  # epochs (networks) or boosting rounds (trees) without improvement
    batch_size: int | None = None
    alpha: float | None = None  # weight of the carbon-balance term
    window: int = WINDOW
    horizon: int = HORIZON
    stride: int = STRIDE
    min_target_days: int = 1  # a window needs this many observed days among its last `horizon`
    val_fraction: float = 0.2  # last part of each training site's record used for validation
    context_windows: int = 8  # feature windows per sample for models that need site context
    device: str = "auto"
    #: seed ensembles of networks: 'grouped' (the members share every batch, one grouped
    #: network: ``cbgrid.members.fit_grouped``), 'sequential' (one member after another), or
    #: 'auto': grouped on a CUDA device where the network has a grouped form, else sequential
    ensemble: str = "auto"
    hparams: dict = field(default_factory=dict)  # overrides of the published hyperparameters
    threads: int | None = None  # CPU threads for torch and the trees (None: library defaults)
    protocol: str = "cbgrid"

    @property
    def rules(self) -> Protocol:
        """The protocol's rules."""
        return get(self.protocol)

    def resolved(self) -> TrainConfig:
        """A copy with every unset field taken from the protocol (trees take its tree patience)."""
        rules = self.rules
        fill = {}
        for name in FROM_PROTOCOL:
            if getattr(self, name) is None:
                fill[name] = getattr(rules, name)
        if self.patience is None and models.is_tree(self.model):
            fill["patience"] = rules.trees.get("patience", rules.patience)
        return dataclasses.replace(self, **fill)

    @property
    def windows(self) -> WindowSpec:
        """The window rules as one serialisable spec."""
        return WindowSpec(self.window, self.horizon, self.stride, self.min_target_days, self.context_windows)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        names_ = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names_})
