"""fedcare.server."""
