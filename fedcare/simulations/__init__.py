"""fedcare.simulations."""
