#!/usr/bin/env python3
"""A plugin that declares nothing: stands in for a node that does not run superscalar."""

from pyln.client import Plugin

plugin = Plugin()
plugin.run()
