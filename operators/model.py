"""The online ranking model: River logistic regression over candidate features.

It learns, test-then-train, on every new like of an item in the head it re-ranks (the
caller decides: :func:`operators.feedback_loop.apply_event`): the liked item's features
(as a candidate just before the like) are a positive example, a few other candidates of
that head are negatives. Before learning, it scores the same examples, so River's metrics
(ROC AUC and log loss over the last :data:`METRICS_WINDOW` examples, exact) and an
ADWIN drift detector on the loss track the model online; the worker exports them
(docs/metrics.md) and ``recloop evaluate`` reports them.

Scoring many candidates per request goes through :meth:`RankingModel.score_columns`
(the ranker's feature columns; :meth:`RankingModel.score_many` for dicts), which
evaluates the same learned pipeline (standard scaling, then the logistic model) with
plain arithmetic; a test keeps it equal to River's ``predict_proba_one``.

Example:
    >>> model = RankingModel(seed=1)
    >>> model.learn([{"covisit": 1.0, "trend": 0.2}], [{"covisit": 0.0, "trend": 0.9}])
    >>> model.updates, 0.0 < model.score({"covisit": 1.0, "trend": 0.2}) < 1.0
    (1, True)

"""

from __future__ import annotations

import math
import pickle
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from river import compose, drift, linear_model, metrics, optim, preprocessing, utils

Features = Mapping[str, float]

#: examples (a like and its negatives: 5 by default) the online ROC AUC and log loss cover.
#: A window, not the whole stream: a live figure should say how the model does now.
#: River's ``ROCAUC`` over the whole stream is an approximation on 10 thresholds, which
#: probabilities near a 1-in-5 base rate fall between (0.571 against an exact 0.604 on
#: the first 20,000 MovieLens ratings); ``RollingROCAUC`` is exact over its window.
METRICS_WINDOW = 2000
#: River's RollingROCAUC buffers its updates until it is read: it is read (flushed) every
#: this many likes, so the buffer, and the checkpoint that pickles it, stay bounded
_FLUSH_EVERY = METRICS_WINDOW // 5


class RankingModel:
    """River's logistic regression on standardised features, learning one like at a time.

    Hyperparameters are stored verbatim (River's contract); ``learn`` never mutates its
    inputs; scoring has no side effects; pickling round-trips (:meth:`snapshot`).

    Args:
        learning_rate: SGD step size.
        l2: L2 regularisation.
        seed: kept for the contract; learning itself is deterministic.

    """

    def __init__(self, learning_rate: float = 0.05, l2: float = 0.0, seed: int = 0) -> None:
        self.learning_rate = learning_rate
        self.l2 = l2
        self.seed = seed
        self.pipeline = compose.Pipeline(
            preprocessing.StandardScaler(),
            linear_model.LogisticRegression(optimizer=optim.SGD(learning_rate), l2=l2),
        )
        self._new_metrics()
        self.drift = drift.ADWIN()
        self.drifts = 0
        self.updates = 0

    def _new_metrics(self) -> None:
        self.auc = metrics.RollingROCAUC(window_size=METRICS_WINDOW)
        # River's Rolling wraps the metric (its ``get`` forwarded, untyped)
        self.log_loss: Any = utils.Rolling(metrics.LogLoss, window_size=METRICS_WINDOW)
        #: the labels of the examples in the window (the AUC needs both)
        self.recent: deque[bool] = deque(maxlen=METRICS_WINDOW)

    @property
    def version(self) -> str:
        """Names the model and how many likes it has learned from (recorded in snapshots)."""
        return f"logreg-{self.updates}"

    def score(self, features: Features) -> float:
        """The probability that the user likes this candidate (River's own prediction)."""
        return float(self.pipeline.predict_proba_one(dict(features)).get(True, 0.5))

    def score_many(self, rows: Sequence[Features]) -> list[float]:
        """:meth:`score` for many candidates at once, from the same learned parameters.

        Through :meth:`score_columns`: an absent feature stands at its mean, so it adds
        nothing (as in River).
        """
        names = list(self.pipeline["LogisticRegression"].weights)
        means = self.pipeline["StandardScaler"].means
        columns = np.empty((len(names), len(rows)))
        for j, name in enumerate(names):
            mean = means.get(name, 0.0)
            columns[j] = [mean if (value := row.get(name)) is None else value for row in rows]
        return self.score_columns(names, columns)

    def score_columns(self, names: Sequence[str], columns: npt.NDArray[np.float64]) -> list[float]:
        """:meth:`score` for candidates given as columns (row ``j``: feature ``names[j]``).

        River's pipeline (standard scaling, then the logistic model) in plain arithmetic,
        element by element, without a dict per candidate (a list re-ranks thirty of them).
        A feature the model has not seen adds nothing; one with no spread adds 0, as in
        River.
        """
        scaler = self.pipeline["StandardScaler"]
        logistic = self.pipeline["LogisticRegression"]
        means, variances = scaler.means, scaler.vars
        at = {name: j for j, name in enumerate(names)}
        z = np.full(columns.shape[1], float(logistic.intercept))
        for name, weight in logistic.weights.items():
            j = at.get(name)
            sigma = math.sqrt(variances.get(name, 0.0))
            if j is not None and sigma > 0.0:
                z = z + weight * (columns[j] - means.get(name, 0.0)) / sigma
        return [1.0 / (1.0 + math.exp(-v)) if v > -500 else 0.0 for v in z.tolist()]

    def learn(self, positives: Sequence[Features], negatives: Sequence[Features]) -> None:
        """Test, then train, on one like: its positive example(s) and the passed-over ones."""
        for label, examples in ((True, positives), (False, negatives)):
            for features in examples:
                x = dict(features)
                p = self.score(x)
                self.auc.update(label, p)
                self.log_loss.update(label, p)
                self.recent.append(label)
                loss = -math.log(max(p if label else 1.0 - p, 1e-12))
                self.drift.update(loss)
                if self.drift.drift_detected:
                    self.drifts += 1
                self.pipeline.learn_one(x, label)
        self.updates += 1
        if self.updates % _FLUSH_EVERY == 0:
            self.auc.get()

    def figures(self) -> dict[str, Any]:
        """Online figures, JSON-ready: ROC AUC, log loss, drifts detected, likes learned.

        The ROC AUC and log loss are those of the predictions made before learning each
        example, over the last ``window`` (:data:`METRICS_WINDOW`) examples (``None``
        until they are defined); ``drifts`` and ``updates`` count from when the model was
        new; ``version`` as snapshots name it.
        """
        labels = set(self.recent)
        return {
            "version": self.version,
            "roc_auc": float(self.auc.get()) if len(labels) == 2 else None,
            "log_loss": float(self.log_loss.get()) if labels else None,
            "drifts": self.drifts,
            "updates": self.updates,
            "window": METRICS_WINDOW,
        }

    def snapshot(self) -> bytes:
        """The whole model (weights, scaler, metrics, detector) as bytes."""
        return pickle.dumps(self, protocol=pickle.HIGHEST_PROTOCOL)

    def set_learning_rate(self, learning_rate: float) -> None:
        """Change the SGD step size from now on (a checkpoint restored under new settings)."""
        if learning_rate <= 0:
            raise ValueError(f"learning_rate must be positive, got {learning_rate}")
        self.learning_rate = learning_rate
        self.pipeline["LogisticRegression"].optimizer = optim.SGD(learning_rate)

    @classmethod
    def restore(cls, data: bytes) -> RankingModel:
        """The model :meth:`snapshot` wrote (trusted bytes: the worker's own checkpoint)."""
        model = pickle.loads(data)  # our own checkpoint, never user input
        if not isinstance(model, cls):
            raise TypeError("not a RankingModel checkpoint")
        if not hasattr(model, "recent"):  # written before the metrics had a window:
            model._new_metrics()  # the learning is kept, its figures start afresh
        return model
