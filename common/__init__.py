"""Code shared by every AstralBoot service: bus, configuration, CLI."""

__version__ = "0.2.0"
