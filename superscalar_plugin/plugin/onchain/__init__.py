"""Chain duties run at every block: exits, fee bumps, sales on chain, the LSP's unroll."""
