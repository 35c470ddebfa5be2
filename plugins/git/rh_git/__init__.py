"""rh-git: the ``git`` install method (``rh.GitPackage`` and ``git+...`` requirements)."""
