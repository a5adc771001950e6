"""A factory's end: its phases, migration and close (LSP), moves and hand-over (client)."""
