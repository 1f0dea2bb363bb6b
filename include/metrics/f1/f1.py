"""F1 as an ``evaluate`` metric, computed with scikit-learn (a local copy of the Hugging Face module, so
``evaluate.load(path)`` works offline: the task image has no Hub access)."""

import datasets
import evaluate
from sklearn.metrics import f1_score

_DESCRIPTION = """F1: the harmonic mean of precision and recall, 2 * P * R / (P + R)."""

_KWARGS_DESCRIPTION = """
Args:
    predictions (list of int): predicted labels.
    references (list of int): ground-truth labels.
    labels (list of int): the labels to include (default: all present).
    pos_label (int): the positive class when average="binary".
    average (str or None): "binary", "micro", "macro", "weighted", "samples", or None for per-class scores.
    sample_weight (list of float): sample weights.
    zero_division (0, 1 or "warn"): the value when a division by zero occurs.
Returns:
    f1 (float, or a list of floats when average=None).
"""

_CITATION = """@article{scikit-learn, title={Scikit-learn: Machine Learning in Python}, author={Pedregosa, F. and others},
journal={Journal of Machine Learning Research}, volume={12}, pages={2825--2830}, year={2011}}"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class F1(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("int32")),
                    "references": datasets.Sequence(datasets.Value("int32")),
                }
                if self.config_name == "multilabel"
                else {
                    "predictions": datasets.Value("int32"),
                    "references": datasets.Value("int32"),
                }
            ),
            reference_urls=["https://scikit-learn.org/stable/modules/generated/sklearn.metrics.f1_score.html"],
        )

    def _compute(self, predictions, references, labels=None, pos_label=1, average="binary", sample_weight=None,
                 zero_division="warn"):
        score = f1_score(references, predictions, labels=labels, pos_label=pos_label, average=average,
                     sample_weight=sample_weight, zero_division=zero_division)
        return {"f1": float(score) if getattr(score, "size", 1) == 1 else score.tolist()}

