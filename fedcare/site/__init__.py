"""fedcare.site: a hospital site's federated training.

The ClientApp, DP-SGD, the site's ledger use, audit log and policy.
"""
