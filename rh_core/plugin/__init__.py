"""The contract with plugins: the hook specifications (``hookspecs``), the interfaces each plugin
kind implements and the messages passed to them (``interfaces``), and the plugin host that loads
plugins through pluggy (``host``)."""
