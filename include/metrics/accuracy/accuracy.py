"""Accuracy as an ``evaluate`` metric, computed with scikit-learn (a local copy of the Hugging Face module, so
``evaluate.load(path)`` works offline: the task image has no Hub access)."""

import datasets
import evaluate
from sklearn.metrics import accuracy_score

_DESCRIPTION = """Accuracy: the fraction of predictions that equal the references."""

_KWARGS_DESCRIPTION = """
Args:
    predictions (list of int): predicted labels.
    references (list of int): ground-truth labels.
    normalize (bool): fraction (True) or count (False).
    sample_weight (list of float): sample weights.
Returns:
    accuracy (float, or a list of floats when average=None).
"""

_CITATION = """@article{scikit-learn, title={Scikit-learn: Machine Learning in Python}, author={Pedregosa, F. and others},
journal={Journal of Machine Learning Research}, volume={12}, pages={2825--2830}, year={2011}}"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Accuracy(evaluate.Metric):
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
            reference_urls=["https://scikit-learn.org/stable/modules/generated/sklearn.metrics.accuracy_score.html"],
        )

    def _compute(self, predictions, references, normalize=True, sample_weight=None):
        return {"accuracy": float(accuracy_score(references, predictions, normalize=normalize,
                                                 sample_weight=sample_weight))}

