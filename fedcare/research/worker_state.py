"""What a site worker keeps between the runs of one engine session, and what it drops.

Kept (costly, and the same for every run): TensorFlow, the compiled training step of
each model shape (``site.training.get_trainer``), each partition's rows
(``site.site.federated_rows``) and the pooled table it was cut from
(``data.datasets._pooled_parts``), the accountant's epsilon tables (pure functions).
Dropped before every run: the per-run site cache (``site.site.load_site``: it names
the run's state folder, where the site's ledger, audit log and model parts live) and the
calibrated noise per config. A run therefore never sees another run's ledger or model:
both live in its own run folder, and nothing that points there survives the run.
"""

from __future__ import annotations


def clear_run_state() -> None:
    """Runs in each site worker at the start of every simulation of a session."""
    from fedcare.site import site

    site.load_site.cache_clear()
    site.noise_multiplier_for.cache_clear()
