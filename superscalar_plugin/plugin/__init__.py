"""The Core Lightning plugin: the only place pyln is used (in `main`)."""
