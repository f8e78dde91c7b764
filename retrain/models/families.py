"""The model family registry: one `Family` record per family, and config checks without importing the models.

A family is everything the pipeline needs to know about one kind of model, in one place: the tasks it
fits, how it is built (a builder returning an unfitted scikit-learn Pipeline), its default search space,
how its threads are set for training and for serving, how it is saved (LightGBM booster text, or skops
with the family's trusted-types list), whether it takes monotone constraints, whether it early-stops and
is pruned on boosting rounds, and whether it is a meta family (stacking). `FAMILIES` maps the name to the
record; `retrain/config.py` validates `candidates.families` and the per-family sections against it, and
estimators / tuning / the candidates stage look a family up instead of comparing its name.

Importing this module must stay cheap: a run rejects a bad `candidates` section (and a fully cached rerun
starts) without importing LightGBM, scikit-learn or pandas, so every builder imports them in its body.

Adding a family is one `Family(...)` entry in `FAMILIES` (see docs/models.md, "Adding a family").
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal

from retrain.errors import ConfigError

if TYPE_CHECKING:
    from sklearn.pipeline import Pipeline

TASKS: tuple[str, ...] = ("binary", "multiclass", "regression")
"""Every task a family can declare (dataset.task)."""

CLASSIFICATION = ("binary", "multiclass")

Builder = Callable[[str, Mapping[str, Any], list[str], list[str]], "Pipeline"]
"""(task, hyperparameters, numeric columns, categorical columns) -> an unfitted Pipeline taking the raw columns."""

RoundsFit = Callable[["Pipeline", Any, Any, tuple[Any, Any], int, Sequence[Any]], "Pipeline"]
"""(model, X, y, (X_valid, y_valid), early_stopping_rounds, callbacks) -> the model, fitted with early stopping."""

Format = Literal["lightgbm-text", "skops", "stacking"]
"""How a fitted model is written (`model.json` records it; `load_predictor` dispatches on it)."""

SKOPS_BASE_TRUSTED: frozenset[str] = frozenset({"numpy.dtype"})
"""Types every skops family may need beyond skops' own safe defaults."""

LIGHTGBM_THREAD_KEYS = ("n_jobs", "num_threads", "nthread", "nthreads", "num_thread")
"""LightGBM's names (aliases) for its thread count; the planner sets `n_jobs` and drops the others."""


@dataclass(frozen=True)
class Threads:
    """How a family's thread count is set for training and for serving.

    Training: `plan_threads` (retrain/models/tuning.py) decides the threads per model; `requested_by` names
    the `fixed` hyperparameter read as the wanted count (None: the cores are split between parallel trials),
    the `drop` hyperparameters are removed before building, and `param` receives the planned count (None:
    the estimator has no thread parameter; threadpoolctl bounds its OpenMP / BLAS pools, as for every fit).

    Serving, one rule for every family, applied by the loaders (`load_predictor`, `ServeThreads` in
    retrain/models/estimators.py): a prediction of at most `SERVE_ONE_THREAD_ROWS` rows (a request) runs on
    one thread: OpenMP and BLAS bounded to one, estimator `n_jobs` 1, LightGBM `num_threads=1`. A larger batch
    runs on every available core (the process's CPU affinity) when `parallel_batches` is set, on one thread
    otherwise. Set it only for estimators that score each row on its own, so that a batch's scores are
    bit-identical on any number of threads (LightGBM, HistGradientBoosting); a forest's parallel predict
    sums its trees in whichever order the threads finish, and a threaded BLAS product is not promised
    bit-identical, so those stay on one thread. `serve_params` are set on the model when it is saved and
    loaded (e.g. `n_jobs: 1`): the file does not depend on the training threads, and joblib is never used.
    A meta family's record applies to its own step (stacking's meta-learner); each base follows its own.
    """

    requested_by: str | None = None
    drop: tuple[str, ...] = ()
    param: str | None = None
    serve_params: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    parallel_batches: bool = False


@dataclass(frozen=True)
class Family:
    """One model family: everything the pipeline needs to know about it (see the module docstring).

    `space` is the default search space, in params.yaml's form (`{name: {low, high, log, int} | {choices}}`),
    used when `candidates.<name>.space` is not given. `trusted_types` are the types skops may build when
    loading this family's file beyond skops' defaults (anything else is refused). `monotone_param` is the
    estimator hyperparameter taking one sign per column in the preprocessing's order (numeric first);
    None: the family cannot be built monotone; `monotone_tasks` limits it to some tasks (scikit-learn's
    trees refuse constraints on multiclass). `fit_rounds` fits with early stopping on a validation fold
    and runs LightGBM-style callbacks after every boosting round (pruning, the deadline); the fitted
    estimator exposes `best_iteration_`. None: no boosting rounds to stop or prune on (pruning is between
    folds). `check_params` validates `candidates.<name>.fixed` against the task before anything is fit.
    A `meta` family has no builder: it is assembled from the other families' tuned models. `defaults` are
    the keys of `candidates.<name>` (fixed, early_stopping_rounds, ...) used when params.yaml leaves the
    section (or that key) out: a params file with no `candidates` section still trains sensible models.
    """

    name: str
    tasks: tuple[str, ...]
    summary: str
    build: Builder | None
    space: Mapping[str, Mapping[str, Any]]
    format: Format
    trusted_types: frozenset[str] = frozenset()
    threads: Threads = Threads()
    monotone_param: str | None = None
    monotone_tasks: tuple[str, ...] | None = None
    fit_rounds: RoundsFit | None = None
    check_params: Callable[[str, Mapping[str, Any]], Any] | None = None
    meta: bool = False
    defaults: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    def monotone_for(self, task: str | None) -> str | None:
        """The monotone-constraint hyperparameter for the task (None: the family cannot be built monotone)."""
        if task is not None and self.monotone_tasks is not None and task not in self.monotone_tasks:
            return None
        return self.monotone_param

    @property
    def boosting_rounds(self) -> bool:
        """Early stopping inside CV folds and pruning on boosting rounds apply to this family."""
        return self.fit_rounds is not None


OBJECTIVE_KEYS = ("objective", "app", "application", "objective_type", "loss")
"""LightGBM's names (aliases) for the objective parameter."""

LIGHTGBM_OBJECTIVES: dict[str, frozenset[str]] = {
    "binary": frozenset({"binary"}),
    "multiclass": frozenset({"multiclass", "softmax"}),
    "regression": frozenset(
        {
            "regression",
            "regression_l2",
            "l2",
            "mean_squared_error",
            "mse",
            "l2_root",
            "root_mean_squared_error",
            "rmse",
            "regression_l1",
            "l1",
            "mean_absolute_error",
            "mae",
            "huber",
            "fair",
            "poisson",
            "quantile",
            "mape",
            "mean_absolute_percentage_error",
            "gamma",
            "tweedie",
        }
    ),
}
"""LightGBM objectives that fit each task; `candidates.lightgbm.fixed.objective` outside these fails."""


def lightgbm_params(task: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """LightGBM hyperparameters with the objective set by the task.

    A declared objective that contradicts the task (`objective: binary` on a regression) is a
    ConfigError naming the key, not a silent override. Binary and regression keep their objective
    (default `binary` / `regression`); multiclass leaves it to LGBMClassifier, which picks `multiclass`
    with num_class from the training labels (a fold holding two classes then still trains).
    """
    out = dict(params)
    declared = {k: out.pop(k) for k in OBJECTIVE_KEYS if k in out}
    if len(set(map(str, declared.values()))) > 1:
        raise ConfigError(f"candidates.lightgbm.fixed sets the objective twice, differently: {declared}")
    objective = next(iter(declared.values()), None)
    allowed = LIGHTGBM_OBJECTIVES[task]
    if objective is not None and str(objective) not in allowed:
        key = next(iter(declared))
        raise ConfigError(
            f"candidates.lightgbm.fixed.{key} = {objective!r} does not fit dataset.task {task!r}; "
            f"use one of {sorted(allowed)} or remove it (the task sets the objective)"
        )
    if task == "binary":
        out["objective"] = "binary"
    elif task == "regression":
        out["objective"] = str(objective or "regression")
    return out


# Builders: each imports its libraries in its body (this module must not import them).


def _build_lightgbm(task: str, params: Mapping[str, Any], numeric: list[str], categorical: list[str]) -> Pipeline:
    """LGBMClassifier / LGBMRegressor on CategoryEncoder output (floats + pandas categoricals, native splits)."""
    import lightgbm as lgb
    from sklearn.pipeline import Pipeline

    from retrain.models.preprocessing import CategoryEncoder

    model = lgb.LGBMRegressor if task == "regression" else lgb.LGBMClassifier
    return Pipeline(
        [("prep", CategoryEncoder(numeric, categorical)), ("model", model(**lightgbm_params(task, params)))]
    )


def _fit_lightgbm_rounds(
    model: Pipeline,
    X: Any,
    y: Any,
    eval_set: tuple[Any, Any],
    early_stopping_rounds: int,
    callbacks: Sequence[Any],
) -> Pipeline:
    """Fit the preprocessing, then boost until the validation loss stops improving (plus the given callbacks)."""
    import lightgbm as lgb

    prep = model.named_steps["prep"].fit(X)
    model.named_steps["model"].fit(
        prep.transform(X),
        y,
        eval_X=(prep.transform(eval_set[0]),),
        eval_y=(eval_set[1],),
        callbacks=[lgb.early_stopping(early_stopping_rounds, first_metric_only=True, verbose=False), *callbacks],
    )
    return model


def _build_hgb(task: str, params: Mapping[str, Any], numeric: list[str], categorical: list[str]) -> Pipeline:
    """HistGradientBoosting with native categorical support on ordinal codes."""
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
    from sklearn.pipeline import Pipeline

    from retrain.models.preprocessing import ordinal_prep

    hgb = HistGradientBoostingRegressor if task == "regression" else HistGradientBoostingClassifier
    mask = [False] * len(numeric) + [True] * len(categorical)
    estimator = hgb(**{"categorical_features": mask, **params})
    return Pipeline([("prep", ordinal_prep(numeric, categorical)), ("model", estimator)])


def _build_logreg(task: str, params: Mapping[str, Any], numeric: list[str], categorical: list[str]) -> Pipeline:
    """(Multinomial) LogisticRegression on scaled numbers and one-hot categories."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline

    from retrain.models.preprocessing import linear_prep

    return Pipeline([("prep", linear_prep(numeric, categorical)), ("model", LogisticRegression(**params))])


def _build_ridge(task: str, params: Mapping[str, Any], numeric: list[str], categorical: list[str]) -> Pipeline:
    """Ridge regression on scaled numbers and one-hot categories."""
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import Pipeline

    from retrain.models.preprocessing import linear_prep

    return Pipeline([("prep", linear_prep(numeric, categorical)), ("model", Ridge(**params))])


def _build_random_forest(task: str, params: Mapping[str, Any], numeric: list[str], categorical: list[str]) -> Pipeline:
    """RandomForestClassifier / RandomForestRegressor on ordinal codes (missing and unseen values as NaN)."""
    from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor
    from sklearn.pipeline import Pipeline

    from retrain.models.preprocessing import ordinal_prep

    forest = RandomForestRegressor if task == "regression" else RandomForestClassifier
    return Pipeline([("prep", ordinal_prep(numeric, categorical)), ("model", forest(**params))])


def _defaults(**keys: Any) -> Mapping[str, Any]:
    """A family's default `candidates.<name>` keys (read-only)."""
    return MappingProxyType(keys)


def _space(**dims: Mapping[str, Any]) -> Mapping[str, Mapping[str, Any]]:
    """A read-only default search space."""
    return MappingProxyType({name: MappingProxyType(dict(dim)) for name, dim in dims.items()})


FAMILIES: Mapping[str, Family] = MappingProxyType(
    {
        family.name: family
        for family in (
            Family(
                name="lightgbm",
                tasks=TASKS,
                summary="LGBMClassifier / LGBMRegressor, native categorical splits",
                build=_build_lightgbm,
                space=_space(
                    learning_rate={"low": 0.03, "high": 0.2, "log": True},
                    num_leaves={"low": 8, "high": 128, "int": True, "log": True},
                    min_child_samples={"low": 5, "high": 200, "int": True, "log": True},
                    colsample_bytree={"low": 0.5, "high": 1.0},
                    reg_lambda={"low": 0.001, "high": 10.0, "log": True},
                ),
                format="lightgbm-text",
                # every row scored on its own: a batch on every core is bit-identical to one thread
                threads=Threads(
                    requested_by="n_jobs", drop=LIGHTGBM_THREAD_KEYS, param="n_jobs", parallel_batches=True
                ),
                monotone_param="monotone_constraints",
                fit_rounds=_fit_lightgbm_rounds,
                check_params=lightgbm_params,
                defaults=_defaults(
                    fixed={"verbose": -1, "deterministic": True, "force_row_wise": True, "n_jobs": 1, "n_estimators": 3000},
                    early_stopping_rounds=50,
                    pruning_warmup_rounds=100,
                ),
            ),
            Family(
                name="hgb",
                tasks=TASKS,
                summary="HistGradientBoostingClassifier / Regressor, native categorical support",
                build=_build_hgb,
                space=_space(
                    learning_rate={"low": 0.04, "high": 0.2, "log": True},
                    max_leaf_nodes={"low": 8, "high": 64, "int": True, "log": True},
                    min_samples_leaf={"low": 5, "high": 100, "int": True, "log": True},
                    l2_regularization={"low": 0.001, "high": 10.0, "log": True},
                ),
                format="skops",
                # its native categoricals: TreePredictor and the partial(check_array) of its internal
                # ColumnTransformer (partial is safe here: skops still checks the wrapped function)
                trusted_types=SKOPS_BASE_TRUSTED
                | {
                    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
                    "functools.partial",
                    "sklearn.utils.validation.check_array",
                },
                # no n_jobs parameter: OpenMP threads, bounded by threadpoolctl in training and serving; its
                # predict scores each row on its own (a batch on every core is bit-identical to one thread)
                threads=Threads(requested_by="n_jobs", drop=LIGHTGBM_THREAD_KEYS, parallel_batches=True),
                monotone_param="monotonic_cst",
                monotone_tasks=("binary", "regression"),
                defaults=_defaults(
                    fixed={"max_iter": 500, "early_stopping": True, "n_iter_no_change": 20, "n_jobs": 1}
                ),
            ),
            Family(
                name="logreg",
                tasks=CLASSIFICATION,
                summary="LogisticRegression (multinomial for multiclass)",
                build=_build_logreg,
                space=_space(C={"low": 0.001, "high": 10.0, "log": True}),
                format="skops",
                trusted_types=SKOPS_BASE_TRUSTED,
                # BLAS on one thread, batches too: a threaded product is not promised bit-identical
                threads=Threads(),
                defaults=_defaults(fixed={"max_iter": 2000}),
            ),
            Family(
                name="ridge",
                tasks=("regression",),
                summary="Ridge regression",
                build=_build_ridge,
                space=_space(alpha={"low": 0.01, "high": 100.0, "log": True}),
                format="skops",
                trusted_types=SKOPS_BASE_TRUSTED,
                threads=Threads(),  # as logreg
            ),
            Family(
                name="random_forest",
                tasks=TASKS,
                summary="RandomForestClassifier / RandomForestRegressor on ordinal-coded categories",
                build=_build_random_forest,
                # kept small for the serving gates (evaluate.gates.latency): a single-row predict costs ~0.3 ms
                # per tree (75 trees on Adult: p95 29 ms, the gate is 50 ms), and 100 unbounded trees on
                # Adult's 26k rows are 40 MB (depth <= 12, leaves >= 5: 7 MB, and a better AUC)
                space=_space(
                    n_estimators={"low": 50, "high": 120, "int": True, "log": True},
                    max_depth={"low": 4, "high": 16, "int": True},
                    min_samples_leaf={"low": 2, "high": 50, "int": True, "log": True},
                    max_features={"low": 0.2, "high": 0.8},
                ),
                format="skops",
                trusted_types=SKOPS_BASE_TRUSTED | {"sklearn.tree._tree.Tree"},
                threads=Threads(
                    requested_by="n_jobs",
                    drop=("n_jobs",),
                    param="n_jobs",
                    serve_params=MappingProxyType({"n_jobs": 1}),
                    # not parallel_batches: predict_proba with n_jobs > 1 adds the trees' outputs in whichever
                    # order the threads finish (last-bit differences), so batches stay on one thread too
                ),
                monotone_param="monotonic_cst",
                monotone_tasks=("binary", "regression"),
                defaults=_defaults(fixed={"n_jobs": 1}),
            ),
            Family(
                name="stacking",
                tasks=TASKS,
                summary="LogisticRegression / Ridge meta-learner over the other families' out-of-fold scores",
                build=None,
                space=_space(),  # nothing to search: `fixed` holds the meta-learner's C / alpha
                format="stacking",
                threads=Threads(),  # the meta-learner (NumPy, BLAS) on one thread; each base follows its own record
                meta=True,
            ),
        )
    }
)
"""Every model family the pipeline can train, by name (the names `candidates.families` accepts)."""


def known() -> str:
    """The registered family names, for error messages."""
    return ", ".join(sorted(FAMILIES))


def get_family(name: str) -> Family:
    """The family's record; a ConfigError listing the known families for any other name."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise ConfigError(f"unknown model family {name!r}; known families: {known()}") from None


def check_family(family: str, task: str, fixed: Mapping[str, Any] | None = None) -> None:
    """Fail early with a ConfigError when a family (or its fixed hyperparameters) cannot serve the task."""
    record = get_family(family)
    if task not in record.tasks:
        raise ConfigError(
            f"candidates.families: {family!r} does not apply to dataset.task {task!r} (it fits {list(record.tasks)})"
        )
    if record.check_params is not None and fixed is not None:
        record.check_params(task, fixed)
