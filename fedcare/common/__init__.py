"""fedcare.common."""
