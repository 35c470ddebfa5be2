"""rh-ray: runs rh_core calls as Ray tasks. Importing this package never imports Ray.

Start a server with it through ``rh.LocalCluster(executor="ray")`` or
``python -m rh_core.server --state-dir DIR --executor ray [-o address=auto]``.
"""

__version__ = "0.1.0"
