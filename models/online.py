"""Online learners built from a spec string: one typed factory for every river estimator
the online head may be.

A spec is a pipeline of steps joined by `|`, each a known river class name with
optional keyword arguments (Python literals, or an optimizer such as `SGD(0.05)`):

>>> model = build_learner("StandardScaler | LogisticRegression(l2=0.001)")
>>> list(model.steps), model["LogisticRegression"].l2
(['StandardScaler', 'LogisticRegression'], 0.001)
>>> task_of(build_learner("HoeffdingAdaptiveTreeRegressor(seed=1)"))
'regression'
>>> build_learner("os.system('x')")
Traceback (most recent call last):
...
ValueError: learner spec step "os.system('x')" names none of: StandardScaler, ... (see ...)
"""

from __future__ import annotations

import ast
from collections.abc import Callable
from typing import Any, Literal

from river import base, compose, forest, linear_model, naive_bayes, optim, preprocessing, tree

__all__ = ["EXAMPLE_SPECS", "LEARNERS", "Task", "boost_learning_rate", "build_learner",
           "task_of"]

Task = Literal["classification", "regression"]

#: the river classes a spec may name (a closed list: a spec comes from settings)
LEARNERS: dict[str, Callable[..., base.Estimator]] = {
    "StandardScaler": preprocessing.StandardScaler,
    "MinMaxScaler": preprocessing.MinMaxScaler,
    "LogisticRegression": linear_model.LogisticRegression,
    "LinearRegression": linear_model.LinearRegression,
    "PARegressor": linear_model.PARegressor,
    "GaussianNB": naive_bayes.GaussianNB,
    "HoeffdingTreeClassifier": tree.HoeffdingTreeClassifier,
    "HoeffdingAdaptiveTreeClassifier": tree.HoeffdingAdaptiveTreeClassifier,
    "HoeffdingAdaptiveTreeRegressor": tree.HoeffdingAdaptiveTreeRegressor,
    "ARFClassifier": forest.ARFClassifier,
    "ARFRegressor": forest.ARFRegressor,
}
#: one spec of each kind of learner: the tests check them all, the benchmark times them
EXAMPLE_SPECS = (
    "StandardScaler | LogisticRegression",
    "LogisticRegression(optimizer=SGD(0.05))",
    "HoeffdingAdaptiveTreeClassifier(seed=1)",
    "ARFClassifier(n_models=3, seed=1)",
    "StandardScaler | LinearRegression",
    "HoeffdingAdaptiveTreeRegressor(seed=1)",
    "GaussianNB",
)
OPTIMIZERS: dict[str, Callable[..., optim.base.Optimizer]] = {
    "SGD": optim.SGD, "Adam": optim.Adam, "AdaGrad": optim.AdaGrad, "RMSProp": optim.RMSProp}


def build_learner(spec: str) -> base.Estimator:
    """A fresh river estimator (or pipeline) for `spec`; ValueError names what is wrong
    (the names a spec may use are the keys of `LEARNERS` and `OPTIMIZERS`)."""
    steps = [s.strip() for s in spec.split("|")]
    if not all(steps):
        raise ValueError(f"learner spec {spec!r} has an empty step")
    built = [_step(s) for s in steps]
    model = built[0] if len(built) == 1 else compose.Pipeline(*built)
    if not isinstance(_final(model), base.Classifier | base.Regressor):
        raise ValueError(f"learner spec {spec!r} does not end in a classifier or regressor")
    return model


def task_of(model: base.Estimator) -> Task:
    """`classification` or `regression`: what the model's labels are."""
    return "classification" if isinstance(_final(model), base.Classifier) else "regression"


def boost_learning_rate(model: base.Estimator, factor: float) -> bool:
    """Multiply the learning rate of a linear model's SGD-like optimizer by `factor`
    (a drift action); False when the model has no constant learning rate to raise."""
    opt = getattr(_final(model), "optimizer", None)
    lr = getattr(opt, "lr", None)
    if not isinstance(lr, optim.schedulers.Constant):
        return False
    lr.learning_rate *= factor
    return True


def _final(model: base.Estimator) -> base.Estimator:
    """The last step of a pipeline, or the model itself."""
    if isinstance(model, compose.Pipeline):
        last: base.Estimator = list(model.steps.values())[-1]
        return last
    return model


def _step(text: str) -> base.Estimator:
    try:
        node = ast.parse(text, mode="eval").body
    except SyntaxError as exc:
        raise ValueError(f"learner spec step {text!r} is not `Name` or `Name(k=v, ...)`"
                         ) from exc
    name, kwargs = _call(node, text, LEARNERS)
    try:
        return LEARNERS[name](**kwargs)
    except TypeError as exc:
        raise ValueError(f"learner spec step {text!r}: {exc}") from exc


def _call(node: ast.expr, text: str, known: dict[str, Callable[..., Any]]
          ) -> tuple[str, dict[str, Any]]:
    """The class name and keyword arguments of `Name` or `Name(k=v, ...)`."""
    if isinstance(node, ast.Name) and node.id in known:
        return node.id, {}
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
            and node.func.id in known:
        if node.func.id in OPTIMIZERS and node.args and not node.keywords:  # SGD(0.05)
            return node.func.id, {"lr": _value(node.args[0], text)}
        if node.args:
            raise ValueError(f"learner spec step {text!r}: give arguments by keyword")
        return node.func.id, {k.arg: _value(k.value, text) for k in node.keywords if k.arg}
    raise ValueError(f"learner spec step {text!r} names none of: {next(iter(known))}, "
                     "... (see ...)")


def _value(node: ast.expr, text: str) -> Any:
    if isinstance(node, ast.Call | ast.Name) and _name(node) in OPTIMIZERS:
        name, kwargs = _call(node, text, OPTIMIZERS)
        return OPTIMIZERS[name](**kwargs)
    try:
        return ast.literal_eval(node)
    except ValueError as exc:
        raise ValueError(f"learner spec step {text!r}: {ast.unparse(node)} is not a literal"
                         ) from exc


def _name(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        return node.func.id
    return None
