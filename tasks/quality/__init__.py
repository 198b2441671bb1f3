"""Quality: the Great Expectations suites of both layers, schema drift between runs, and the
quarantine of a batch that fails (masked once more, leak-scanned before it is written).

This package's `__init__` imports nothing: a CLI process starts the validator process
(tasks/quality/validator.py) before it imports Prefect, and must not pay for Prefect to do so.
Import from the modules: validate, drift, validator.
"""
