"""fedcare.data: CSV loading and validation, splits, preprocessing, schemas, quality checks."""
