"""Configuration: config.toml and refs.toml, loaded once into typed objects."""

from astralboot.common.config.load import load, normalise_mac
from astralboot.common.config.model import (SERVICES, BusConfig, Config, DhcpConfig, HttpConfig, IpfsConfig,
                    MenuConfig, ReservationConfig, StoreConfig, SubnetConfig, TftpConfig)
from astralboot.common.config.render import render, render_settings

__all__ = [
    "SERVICES", "BusConfig", "Config", "DhcpConfig", "HttpConfig", "IpfsConfig", "MenuConfig",
    "ReservationConfig", "StoreConfig", "SubnetConfig", "TftpConfig", "load", "normalise_mac",
    "render", "render_settings",
]
