"""rh-byo-ssh: the ``ssh`` transport, for machines you bring yourself. Importing it never imports paramiko.

Get the class through the plugin host, ``rh.default_host().transport("ssh")``, or import
``rh_byo_ssh.transport.SSHTransport`` directly.
"""

__version__ = "0.1.0"
