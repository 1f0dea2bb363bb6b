"""The ML work of the retraining pipeline, as a plain Python package with no Airflow import.

Each stage is one module with a ``main(argv)``; ``python -m tasks STAGE ...`` runs it, in a Kubernetes pod or
as a local subprocess: the very same command either way.
"""

__version__ = "0.1.0"
