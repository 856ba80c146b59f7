"""Real DHCP clients' scripts for lab tests: busybox udhcpc and ISC dhclient,
each recording what it was told (and dhclient setting only the address)."""

from __future__ import annotations

from pathlib import Path


def udhcpc_script(folder: Path) -> Path:
    """A udhcpc script that records each event's environment and touches nothing."""
    script = folder / "udhcpc.sh"
    script.write_text(f'#!/bin/sh\nenv > "{folder}/udhcpc.$1.env"\n')
    script.chmod(0o755)
    return script


def read_env(path: Path) -> dict[str, str]:
    env = {}
    for line in path.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep:
            env[key] = value
    return env


def dhclient_script(folder: Path) -> Path:
    """A dhclient script that records each event and sets only the address
    (the stock one would rewrite this host's /etc/resolv.conf)."""
    script = folder / "dhclient.sh"
    log = folder / "dhclient.events"
    script.write_text(f"""#!/bin/sh
echo "$reason ip=$new_ip_address host=$new_host_name domain=$new_domain_name \\
routers=$new_routers dns=$new_domain_name_servers lease=$new_dhcp_lease_time \\
server=$new_dhcp_server_identifier" >> "{log}"
case "$reason" in
  BOUND|RENEW|REBIND|REBOOT)
    ip addr replace "$new_ip_address/$new_subnet_mask" dev "$interface" ;;
  RELEASE|EXPIRE|FAIL|STOP)
    [ -n "$old_ip_address" ] && ip addr del "$old_ip_address/$old_subnet_mask" dev "$interface" ;;
esac
exit 0
""")
    script.chmod(0o755)
    return script


def dhclient_events(folder: Path) -> list[dict[str, str]]:
    path = folder / "dhclient.events"
    if not path.exists():
        return []
    events = []
    for line in path.read_text().splitlines():
        reason, *pairs = line.split()
        event = {"reason": reason}
        event.update(p.split("=", 1) for p in pairs if "=" in p)
        events.append(event)
    return events
