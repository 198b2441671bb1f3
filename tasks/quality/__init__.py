"""Quality: the Great Expectations suites of both layers and schema drift between runs (a batch
that fails is quarantined by tasks/storage/quarantine.py).

This package's `__init__` imports nothing: a CLI process starts the validator process
(tasks/quality/validator.py) before it imports Prefect, and must not pay for Prefect to do so.
Import from the modules: validate, drift, validator.
"""
