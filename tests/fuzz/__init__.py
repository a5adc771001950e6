"""Fuzz targets for every parser and both ceremony state machines (hypothesis).

`test_fuzz.py` runs each briefly in the normal suite (derandomized, 100 inputs each);
`run_long.py` runs them for longer and prints inputs and crashes per target. A crash is any
exception outside the project's hierarchy (`engine.errors.SuperscalarError`)."""
