"""rh-sky: on-demand clusters through SkyPilot. Importing it never imports SkyPilot."""

__version__ = "0.1.0"
