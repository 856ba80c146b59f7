"""tftpd."""
