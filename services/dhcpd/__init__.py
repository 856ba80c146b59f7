"""dhcpd."""
