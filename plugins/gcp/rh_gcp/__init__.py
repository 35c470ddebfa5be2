"""rh-gcp: the ``gcp-direct`` provisioner, Compute Engine instances through the Compute API alone.

``rh.cluster(name='g1', provider='gcp-direct', instance_type='n1-standard-8', zone=..., project=...)``.
Importing this package never imports the Google client libraries.
"""
