"""Code shared by every AstralBoot service: bus, configuration, CLI."""

__version__ = "0.3.0"
