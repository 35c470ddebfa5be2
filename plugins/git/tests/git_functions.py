"""Functions the cluster tests send to environments (a module without test imports: pytest is not
installed on a bootstrapped cluster)."""

from __future__ import annotations


def package_version() -> dict[str, str]:
    """The VERSION and the file of rhtest_gitpkg as the environment's worker imports it."""
    import rhtest_gitpkg

    return {"version": rhtest_gitpkg.VERSION, "file": rhtest_gitpkg.__file__}
