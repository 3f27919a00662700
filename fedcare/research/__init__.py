"""fedcare.research: simulations, sweeps, benchmarks (researchers)."""
