"""Clusters: where functions run, as the client sees them.

``base`` holds what every cluster shares (the connection to its server, calls, logs, keeping
results); ``local`` the embedded cluster on this machine (``rh.here``); ``remote`` clusters that a
provisioner plugin brings up and a transport plugin reaches; ``tls`` clusters reached without SSH.
"""
