"""Attack scenarios against the engine: a scripted hostile LSP (coordinator) and hostile clients,
speaking only the engine's byte messages. Each test is an attack that must end in the safe
outcome; every new flow adds its own."""
