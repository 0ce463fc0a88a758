"""sandboxer: rootless sandboxes from TOML profiles, compiled to util-linux chains."""

__version__ = "0.2.0"
