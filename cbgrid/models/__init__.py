"""The model registry: one name space and one interface for trees and networks.

``spec(name)`` says what a model is (family 'tree' or 'network', kind 'static' or 'temporal');
``hyperparameters(name, split)`` gives its published defaults (``catalogs/hyperparameters.yaml``);
``network_class`` / ``tree_class`` give the class. Training (``cbgrid.members``) goes through
``spec`` and these classes only, never through a model name.

Both registries name classes by import path, so nothing heavy (torch, xgboost) is imported
until a model is used. Adding a model is one new module plus one line here:

* a network is an ``nn.Module`` with class attributes ``kind`` ('static' | 'temporal') and
  ``needs_context``, built as ``cls(n_features, n_static, n_onehot, n_targets=3, window=30,
  horizon=15, hidden=..., layers=..., dropout=..., **extra)`` and called on a batch dict
  (see ``cbgrid.models.mlp``);
* a tree library is a ``cbgrid.models.trees.TreeModel`` subclass (see ``cbgrid.models.xgb``).

``register_network`` / ``register_tree`` add one at run time (a user's own model or a test
double); ``registered`` does so for the length of a ``with`` block.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator
from dataclasses import dataclass

from cbgrid import catalog
from cbgrid.errors import InputError, UnknownError

#: Built-in networks: name -> "module:Class".
NETWORKS = {
    "mlp": "cbgrid.models.mlp:MLP",
    "lstm": "cbgrid.models.recurrent:LSTM",
    "ctlstm": "cbgrid.models.recurrent:CTLSTM",
    "gru": "cbgrid.models.recurrent:GRU",
    "ctgru": "cbgrid.models.recurrent:CTGRU",
    "transformer": "cbgrid.models.transformer:Transformer",
    "patch_transformer": "cbgrid.models.transformer:PatchTransformer",
    "tamrl": "cbgrid.models.tamrl:TAMRL",
}
#: The reference implementation's architectures of the same networks (``--protocol reference``);
#: a network without one (the MLP: the reference has no MLP code) keeps its cbgrid architecture.
REFERENCE_NETWORKS = {
    "lstm": "cbgrid.models.reference:LSTM",
    "ctlstm": "cbgrid.models.reference:CTLSTM",
    "gru": "cbgrid.models.reference:GRU",
    "ctgru": "cbgrid.models.reference:CTGRU",
    "transformer": "cbgrid.models.reference:Transformer",
    "patch_transformer": "cbgrid.models.reference:PatchTransformer",
    "tamrl": "cbgrid.models.reference:TAMRL",
}
#: Built-in gradient-boosted tree libraries: name -> "module:Class".
TREES = {
    "xgboost": "cbgrid.models.xgb:XGBoostTrees",
    "lightgbm": "cbgrid.models.lgbm:LightGBMTrees",
}
_EXTRA_NETWORKS: dict[str, type] = {}
_EXTRA_TREES: dict[str, type] = {}


@dataclass(frozen=True)
class ModelSpec:
    """What a model is: its family ('tree' | 'network') and kind ('static' | 'temporal')."""

    name: str
    family: str
    kind: str
    needs_context: bool = False


def _load(ref: str | type) -> type:
    if isinstance(ref, type):
        return ref
    module, _, attr = ref.partition(":")
    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        raise ImportError(f"model class {ref} needs a package that is not installed ({e}); "
                          "install the training extra: pip install 'cbgrid[train]'") from e
    return getattr(mod, attr)


def _networks() -> dict:
    return {**NETWORKS, **_EXTRA_NETWORKS}


def _trees() -> dict:
    return {**TREES, **_EXTRA_TREES}


def available() -> list[str]:
    """Every model name: the trees, then the networks.

    >>> available()[:3]
    ['xgboost', 'lightgbm', 'mlp']
    """
    return [*_trees(), *_networks()]


def register_network(name: str, cls: type) -> None:
    """Make network class ``cls`` trainable as model ``name`` (see the module doc for the contract).

    >>> from cbgrid.models.mlp import MLP
    >>> register_network("my_mlp", MLP); spec("my_mlp").kind
    'static'
    >>> unregister("my_mlp")
    """
    if name in _trees():
        raise InputError(f"{name!r} is a tree model name")
    if getattr(cls, "kind", None) not in ("static", "temporal"):
        raise InputError(f"network {name!r} needs a class attribute kind = 'static' or 'temporal'")
    _EXTRA_NETWORKS[name] = cls


def register_tree(name: str, cls: type) -> None:
    """Make tree class ``cls`` (a ``TreeModel`` subclass) trainable as model ``name``.

    >>> from cbgrid.models.lgbm import LightGBMTrees
    >>> register_tree("my_trees", LightGBMTrees); is_tree("my_trees")
    True
    >>> unregister("my_trees")
    """
    if name in _networks():
        raise InputError(f"{name!r} is a network name")
    _EXTRA_TREES[name] = cls


def unregister(name: str) -> None:
    """Remove a model added with ``register_network`` / ``register_tree``.

    >>> unregister("never_registered")   # a no-op
    """
    _EXTRA_NETWORKS.pop(name, None)
    _EXTRA_TREES.pop(name, None)


@contextlib.contextmanager
def registered(name: str, cls: type) -> Iterator[None]:
    """Register ``cls`` as model ``name`` inside a ``with`` block only (tests, experiments).

    >>> from cbgrid.models.mlp import MLP
    >>> with registered("tiny", MLP):
    ...     "tiny" in available()
    True
    >>> "tiny" in available()
    False
    """
    family = "tree" if hasattr(cls, "fit_one") else "network"
    (register_tree if family == "tree" else register_network)(name, cls)
    try:
        yield
    finally:
        unregister(name)


def _unknown(name: str) -> UnknownError:
    return UnknownError(f"unknown model {name!r}; choose one of {', '.join(available())}")


def is_tree(name: str) -> bool:
    """Whether ``name`` is a registered tree library (without importing any model code).

    >>> is_tree("lightgbm"), is_tree("ctlstm")
    (True, False)
    """
    return name in _trees()


def network_class(name: str, architectures: str = "cbgrid") -> type:
    """The class of network ``name``: cbgrid's, or with ``architectures="reference"`` the
    reference implementation's where it has one.

    >>> network_class("ctlstm").__module__, network_class("ctlstm", "reference").__module__
    ('cbgrid.models.recurrent', 'cbgrid.models.reference')
    """
    nets = _networks()
    if name not in nets:
        raise _unknown(name)
    if architectures == "reference" and name in REFERENCE_NETWORKS and name not in _EXTRA_NETWORKS:
        return _load(REFERENCE_NETWORKS[name])
    return _load(nets[name])


def tree_class(name: str) -> type:
    trees = _trees()
    if name not in trees:
        raise _unknown(name)
    return _load(trees[name])


def spec(name: str) -> ModelSpec:
    """What model ``name`` is; raises ValueError listing the known names.

    >>> spec("xgboost")
    ModelSpec(name='xgboost', family='tree', kind='static', needs_context=False)
    """
    if name in _trees():
        return ModelSpec(name, "tree", "static")
    cls = network_class(name)
    return ModelSpec(name, "network", cls.kind, bool(getattr(cls, "needs_context", False)))


def hyperparameters(name: str, split: str = "koppen") -> dict:
    """Published defaults of ``name`` for ``split`` ('igbp' or 'koppen'; 'official-*' map to them).

    >>> hyperparameters("lightgbm")["learning_rate"]
    0.05
    """
    if name not in _trees() and name not in _networks():
        raise _unknown(name)
    return catalog.hyperparameters(name, split)


def build_network(name: str, n_features: int, n_static: int, n_onehot: int, architectures: str = "cbgrid", **hp):
    """Construct network ``name``; ``hp`` are constructor arguments (hidden, layers, dropout, ...).

    >>> net = build_network("mlp", 18, 2, 22, hidden=16)
    >>> n_parameters(net) > 0
    True
    """
    return network_class(name, architectures)(n_features, n_static, n_onehot, **hp)


def n_parameters(model) -> int:
    """Number of trainable parameters of a torch module.

    >>> import torch
    >>> n_parameters(torch.nn.Linear(3, 2))
    8
    """
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
