"""The model registry: one name space and one interface for trees and networks.

``spec(name)`` says what a model is (family 'tree' or 'network', kind 'static' or 'temporal');
``hyperparameters(name, split)`` gives its published defaults; ``build_network`` constructs a
torch network and ``cbgrid.models.trees.TreeModel`` a gradient-boosted ensemble. Training and
prediction (``cbgrid.train``) go through ``spec`` only, never through a model name.

Networks come from ``cbgrid.models.nets.NETWORKS`` (nn.Module classes with class attributes
``kind`` and ``needs_context``, constructed as ``cls(n_features, n_static, n_onehot,
n_targets=3, window=30, horizon=15, hidden=..., layers=..., dropout=..., **extra)``);
``register_network`` adds one (a user's own architecture, or a test double).
"""

from __future__ import annotations

from dataclasses import dataclass

TREES = ("xgboost", "lightgbm")
_EXTRA: dict[str, type] = {}


@dataclass(frozen=True)
class ModelSpec:
    name: str
    family: str  # 'tree' | 'network'
    kind: str  # 'static' | 'temporal'
    needs_context: bool = False


def _networks() -> dict[str, type]:
    try:
        from cbgrid.models.nets import NETWORKS
    except ImportError:
        NETWORKS = {}
    return {**NETWORKS, **_EXTRA}


def register_network(name: str, cls: type) -> None:
    """Make network class ``cls`` trainable as model ``name`` (see module doc for the contract)."""
    if name in TREES:
        raise ValueError(f"{name!r} is a tree model name")
    if getattr(cls, "kind", None) not in ("static", "temporal"):
        raise ValueError(f"network {name!r} needs a class attribute kind = 'static' or 'temporal'")
    _EXTRA[name] = cls


def available() -> list[str]:
    """Every model name: the trees, then the networks."""
    return [*TREES, *_networks()]


def network_class(name: str) -> type:
    nets = _networks()
    if name not in nets:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(available())}")
    return nets[name]


def spec(name: str) -> ModelSpec:
    """What model ``name`` is; raises ValueError listing the known names."""
    if name in TREES:
        return ModelSpec(name, "tree", "static")
    cls = network_class(name)
    return ModelSpec(name, "network", cls.kind, bool(getattr(cls, "needs_context", False)))


def hyperparameters(name: str, split: str = "koppen") -> dict:
    """Published defaults of ``name`` for ``split`` ('igbp' or 'koppen'; 'official-*' map to them).

    Trees: the CarbonBench XGBoost/LightGBM settings. Networks: ``PUBLISHED_HPARAMS`` of
    ``cbgrid.models.nets`` (hidden, dropout, lr, layers and extras such as nhead/latent);
    networks without a published row get {}.
    """
    split = str(split).removeprefix("official-")
    if name in TREES:
        from cbgrid.models.trees import PUBLISHED

        return dict(PUBLISHED[name])
    network_class(name)
    try:
        from cbgrid.models.nets import PUBLISHED_HPARAMS
    except ImportError:
        return {}
    return dict(PUBLISHED_HPARAMS.get((name, split), {}))


def build_network(name: str, n_features: int, n_static: int, n_onehot: int, **hp):
    """Construct network ``name``; ``hp`` are constructor arguments (hidden, layers, dropout, ...)."""
    return network_class(name)(n_features, n_static, n_onehot, **hp)
