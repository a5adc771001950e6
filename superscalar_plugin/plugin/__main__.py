"""`python -m superscalar_plugin.plugin`: the plugin, for lightningd or a test harness."""

from .main import run

run()
