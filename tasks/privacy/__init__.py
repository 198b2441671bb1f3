"""Privacy: generalization to the analytical layer, rare-domain collapse, risk figures, the
k-anonymous extract, small-cell suppression, and the leak scan of everything a run stages."""

from tasks.privacy.domains import keep_shared_domains
from tasks.privacy.extract import Protected, protect_privacy_task
from tasks.privacy.generalize import generalize_persons_task
from tasks.privacy.leak_scan import LeakScanReport, scan_for_leaks_task

__all__ = [
    "LeakScanReport",
    "Protected",
    "generalize_persons_task",
    "keep_shared_domains",
    "protect_privacy_task",
    "scan_for_leaks_task",
]
