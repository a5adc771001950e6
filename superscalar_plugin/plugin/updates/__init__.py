"""Decker-Wattenhofer state updates inside a factory: the LSP's `factory-update` (lsp.py) and a
client's checks, freeze, signature and retirement of its old channels (client.py)."""
