"""The pipeline's work, one subpackage per concern (docs/architecture.md draws the data path).

ingest, quality, privacy, storage and reporting hold the work; common holds what they share.
"""
