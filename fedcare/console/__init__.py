"""``fedcare console``: read-only browser views of a runs folder and of a site's state dir."""
