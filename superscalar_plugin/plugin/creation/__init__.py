"""A factory's creation: the LSP's ceremony and the client's checks before it signs."""
