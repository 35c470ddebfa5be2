"""rh-conda: the ``conda`` install method (conda packages in each environment's conda prefix)."""
