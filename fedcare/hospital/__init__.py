"""fedcare.hospital: the model at the bedside (bundle, predict, API, validation report, drift)."""
