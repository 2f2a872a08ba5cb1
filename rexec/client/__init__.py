"""The Rexec client: sessions, ``remote_func`` and output handling."""
