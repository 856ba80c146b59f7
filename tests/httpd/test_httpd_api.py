"""The admin JSON API, /api/health and /metrics."""

from __future__ import annotations

import re

from httpd_support import IP, MAC, Client
from httpd_fakes import FakeStore

from astralboot.common.messages import BootEvent


def test_machines_list_and_show(client: Client, fake: FakeStore) -> None:
    fake.add_machine(MAC, ip=IP, os="debian", name="web1")
    fake.add_machine("52:54:00:00:00:02", os="rocky")
    r = client.simulate_get("/api/machines")
    assert r.status_code == 200
    assert {m["name"] for m in r.json["machines"]} == {"web1", "node2"}
    r = client.simulate_get("/api/machines", params={"os": "rocky"})
    assert [m["mac"] for m in r.json["machines"]] == ["52:54:00:00:00:02"]
    r = client.simulate_get(f"/api/machines/{MAC.upper()}")
    assert r.json["name"] == "web1" and r.json["os"] == "debian"
    assert r.json["next_boot"] == "installer"
    assert client.simulate_get("/api/machines/52:54:00:99:99:99").status_code == 404


def test_patch_sets_name_os_class_labels_and_boot_once(client: Client, fake: FakeStore) -> None:
    r = client.simulate_patch(f"/api/machines/{MAC}", json={
        "name": "etcd1", "os": "flatcar", "class": "etcd", "labels": {"rack": "r12"},
        "boot_once": True, "loader": "shim"})
    assert r.status_code == 200, r.text
    m = fake.machines_by_mac[MAC]
    assert (m.name, m.os, m.machine_class, m.labels, m.boot_once, m.loader) == \
        ("etcd1", "flatcar", "etcd", {"rack": "r12"}, True, "shim")
    assert r.json["machine_class"] == "etcd" and r.json["loader"] == "shim"


def test_patch_null_clears_and_put_replaces(client: Client, fake: FakeStore) -> None:
    fake.add_machine(MAC, os="flatcar", machine_class="etcd", labels={"a": "b"})
    client.simulate_patch(f"/api/machines/{MAC}", json={"class": None})
    m = fake.machines_by_mac[MAC]
    assert m.machine_class is None and m.labels == {"a": "b"}
    client.simulate_put(f"/api/machines/{MAC}", json={"os": "debian"})
    m = fake.machines_by_mac[MAC]
    assert m.os == "debian" and m.labels == {} and m.boot_once is False


def test_changes_are_validated(client: Client, fake: FakeStore) -> None:
    url = f"/api/machines/{MAC}"
    for body, words in [
        ({"os": "windows"}, "boot/windows"),
        ({"os": "flatcar", "class": "database"}, "no class"),
        ({"name": "a\nchain http://x/"}, "host name"),
        ({"labels": {"k": "${x}"}}, "labels"),
        ({"boot_once": "yes"}, "true or false"),
        ({"loader": "grub"}, "loader must be one of ipxe, shim"),
        ({"colour": "red"}, "unknown field"),
    ]:
        r = client.simulate_patch(url, json=body)
        assert r.status_code == 400, body
        assert words in r.json["description"], (body, r.json)
    assert client.simulate_patch(url, body="not json",
                                 headers={"Content-Type": "application/json"}).status_code == 400
    assert client.simulate_patch("/api/machines/nonsense", json={}).status_code == 400
    assert MAC not in fake.machines_by_mac


def test_a_change_through_the_api_is_seen_by_the_next_boot_at_once(client: Client,
                                                                   fake: FakeStore) -> None:
    fake.add_machine(MAC, ip=IP, os="debian", labels={"astralboot/next-boot": "disk"})
    assert "sanboot" in client.simulate_get(f"/boot/debian/{MAC}").text
    client.simulate_patch(f"/api/machines/{MAC}", json={"boot_once": True})
    assert "kernel " in client.simulate_get(f"/boot/debian/{MAC}").text
    assert "astralboot/next-boot" not in fake.machines_by_mac[MAC].labels


def test_leases_list(client: Client, fake: FakeStore) -> None:
    fake.add_machine(MAC, ip=IP)
    r = client.simulate_get("/api/leases")
    assert [(lease["ip"], lease["mac"], lease["state"]) for lease in r.json["leases"]] == \
        [(IP, MAC, "bound")]
    assert client.simulate_get("/api/leases", params={"state": "bogus"}).status_code == 400


def test_events_list_filters_by_mac(client: Client, fake: FakeStore) -> None:
    fake.reported += [BootEvent(time=1.0, mac=MAC, service="dhcpd", stage="dhcp.ack"),
                      BootEvent(time=2.0, mac="52:54:00:00:00:02", service="dhcpd",
                                stage="dhcp.ack")]
    r = client.simulate_get("/api/events", params={"mac": MAC})
    assert [(e["mac"], e["stage"]) for e in r.json["events"]] == [(MAC, "dhcp.ack")]
    assert len(client.simulate_get("/api/events").json["events"]) == 2
    assert client.simulate_get("/api/events", params={"mac": "bad"}).status_code == 400
    assert client.simulate_get("/api/events", params={"limit": "0"}).status_code == 400


def test_content_stat(client: Client) -> None:
    r = client.simulate_get("/api/content", params={"path": "boot/debian/images/linux"})
    assert r.status_code == 200
    assert r.json["size"] == 16384 and len(r.json["digest"]) == 64
    r = client.simulate_get("/api/content", params={"path": "boot/debian"})
    assert r.json["is_dir"] is True
    assert {e["path"] for e in r.json["entries"]} >= {"boot/debian/template",
                                                      "boot/debian/classes.toml"}
    assert client.simulate_get("/api/content", params={"path": "nope"}).status_code == 404
    assert client.simulate_get("/api/content", params={"path": "../etc"}).status_code == 400


def test_health_is_what_astralboot_status_reads(client: Client, fake: FakeStore) -> None:
    r = client.simulate_get("/api/health")
    assert r.status_code == 200
    body = r.json
    assert body["service"] == "httpd" and body["status"] == "ok"
    assert {"version", "pid", "started", "details"} <= body.keys()
    assert body["details"]["store"] == "ok"


def test_health_is_degraded_when_the_store_does_not_answer(client: Client,
                                                           fake: FakeStore) -> None:
    fake.down = True
    r = client.simulate_get("/api/health")
    assert r.status_code == 503
    assert r.json["status"] == "degraded"
    assert r.json["details"]["store"].startswith("down:")


def test_metrics_count_requests_bytes_stages_and_leases(client: Client, fake: FakeStore) -> None:
    fake.add_machine(MAC, ip=IP)
    fake.add_machine("52:54:00:00:00:02", ip="192.0.2.151")
    client.simulate_get(f"/boot/debian/{MAC}")
    client.simulate_get("/image/debian/linux")
    client.simulate_get("/image/debian/missing")
    text = client.simulate_get("/metrics").text
    assert 'astralboot_http_requests_total{route="boot",status="200"} 1' in text
    assert 'astralboot_http_requests_total{route="image",status="200"} 1' in text
    assert 'astralboot_http_requests_total{route="image",status="404"} 1' in text
    sent = re.search(r'astralboot_http_response_bytes_total\{route="image"\} (\d+)', text)
    assert sent and 16384 < int(sent.group(1)) < 16384 + 1000  # the image and the 404 body
    assert 'astralboot_boot_stage_total{stage="http.script"} 1' in text
    assert 'astralboot_boot_stage_total{stage="http.image"} 1' in text
    assert 'astralboot_leases{state="bound"} 2' in text
    assert "astralboot_store_up 1" in text
