"""Report layer: one table and plot across precisions, per model and target."""
