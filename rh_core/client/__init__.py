"""The client's side of a server connection: sending calls and reading replies (``connection``),
and what a user sees while it happens (``progress``)."""
