"""Bringing a cluster's runtime up on a fresh machine: probing its platform, wheels built or fetched
for that platform, and starting the server there."""
