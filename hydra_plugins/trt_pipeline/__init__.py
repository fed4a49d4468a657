"""Hydra imports this package on start-up (also inside ``dvc exp run``): it registers the
project's typed schema and build-matrix resolver, so DVC's composition validates conf/ too."""
import pipeline.config.registry  # noqa: F401  (registration happens on import)
