"""rh-example-pyfile: the example plugin of docs/writing-a-plugin.md.

``cluster.install_packages(["pyfile:./helpers.py"])`` makes ``import helpers`` work on the cluster.
"""
