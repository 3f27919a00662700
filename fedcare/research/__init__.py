"""fedcare.research."""
