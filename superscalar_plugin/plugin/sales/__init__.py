"""Liquidity sales: the LSP's seller, the buyer, the co-signers, the paid quotes."""
