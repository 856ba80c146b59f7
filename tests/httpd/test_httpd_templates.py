"""Install templates: every bundled one, the context, classes, the sandbox, Go templates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from httpd_support import IP, MAC, Client
from httpd_fakes import FakeStore

from astralboot.services.httpd import gotemplate
from astralboot.services.httpd.errors import BadTemplate
from astralboot.services.httpd.templates import compile_source

ETCD = [("52:54:00:00:00:01", "192.0.2.101", "etcd1"),
        ("52:54:00:00:00:02", "192.0.2.102", "etcd2"),
        ("52:54:00:00:00:03", "192.0.2.103", "etcd3")]


def test_debian_preseed_is_rendered_for_the_machine_holding_the_address(
        client: Client, fake: FakeStore) -> None:
    fake.add_machine(MAC, ip=IP, os="debian", name="db1")
    r = client.simulate_get("/action/debian/preseed")
    assert r.status_code == 200
    assert "d-i netcfg/get_hostname string db1\n" in r.text
    assert "d-i netcfg/get_domain string lab.test\n" in r.text
    assert "d-i mirror/http/hostname string deb.debian.org\n" in r.text
    assert "d-i preseed/late_command string in-target wget -q -O /dev/null " \
           "http://192.0.2.1:8080/action/debian/installed || true" in r.text
    e = fake.reported[-1]
    assert (e.stage, e.mac, e.ip, e.detail) == ("http.template", MAC, IP, "debian/preseed")


def test_labels_reach_templates(client: Client, fake: FakeStore) -> None:
    fake.add_machine(MAC, ip=IP, os="debian", labels={"mirror": "mirror.lab.test"})
    r = client.simulate_get("/action/debian/preseed")
    assert "d-i mirror/http/hostname string mirror.lab.test\n" in r.text


def test_template_for_an_address_without_a_lease_is_404(client: Client) -> None:
    r = client.simulate_get("/action/debian/preseed", remote_addr="192.0.2.77")
    assert r.status_code == 404
    assert "no lease for 192.0.2.77" in r.text


def test_missing_template_is_404(client: Client, fake: FakeStore) -> None:
    fake.add_machine(MAC, ip=IP)
    assert client.simulate_get("/action/debian/kickstart").status_code == 404


def test_ubuntu_nocloud_seed(client: Client, fake: FakeStore) -> None:
    fake.add_machine(MAC, ip=IP, os="ubuntu", name="u1")
    user = client.simulate_get("/action/ubuntu/user-data")
    meta = client.simulate_get("/action/ubuntu/meta-data")
    assert user.status_code == meta.status_code == 200
    assert user.text.startswith("#cloud-config\n")
    assert "  identity:\n    hostname: \"u1\"\n" in user.text
    assert "autoinstall:\n  version: 1\n" in user.text
    assert meta.text == f'instance-id: "astralboot-{MAC}"\nlocal-hostname: "u1"\n'
    start = client.simulate_get(f"/boot/ubuntu/{MAC}").text
    assert "ds=nocloud;s=http://192.0.2.1:8080/action/ubuntu/ " in start


def test_rocky_kickstart(client: Client, fake: FakeStore) -> None:
    fake.add_machine(MAC, ip=IP, os="rocky", name="r1")
    r = client.simulate_get("/action/rocky/kickstart")
    assert r.status_code == 200
    assert "network --bootproto=dhcp --hostname=r1.lab.test --activate\n" in r.text
    assert "%packages\n" in r.text and "%post\n" in r.text
    start = client.simulate_get(f"/boot/rocky/{MAC}").text
    assert "inst.ks=http://192.0.2.1:8080/action/rocky/kickstart" in start


def test_alpine_answers(client: Client, fake: FakeStore) -> None:
    fake.add_machine(MAC, ip=IP, os="alpine", name="a1", labels={"disk": "vda"})
    r = client.simulate_get("/action/alpine/answers")
    assert 'HOSTNAMEOPTS="a1"\n' in r.text
    assert 'DISKOPTS="-m sys /dev/vda"\n' in r.text
    start = client.simulate_get(f"/boot/alpine/{MAC}").text
    assert "apkovl=http://192.0.2.1:8080/image/alpine/astralboot.apkovl.tar.gz" in start
    assert "astralboot.url=http://192.0.2.1:8080 " in start


def _etcd_cluster(fake: FakeStore) -> None:
    for mac, ip, name in ETCD:
        fake.add_machine(mac, ip=ip, os="flatcar", machine_class="etcd", name=name)
    fake.add_machine("52:54:00:00:00:09", ip="192.0.2.109", os="flatcar",
                     machine_class="worker", name="w1")
    fake.add_machine("52:54:00:00:00:0a", ip="192.0.2.110", os="debian", machine_class="etcd",
                     name="other-os")


def test_flatcar_etcd_member_gets_the_initial_cluster_of_its_class(client: Client,
                                                                   fake: FakeStore) -> None:
    _etcd_cluster(fake)
    r = client.simulate_get("/config/flatcar/ignition", remote_addr="192.0.2.102")
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    ign = json.loads(r.text)
    assert ign["ignition"]["version"].startswith("3.")
    unit = ign["systemd"]["units"][0]
    assert unit["name"] == "etcd-member.service" and unit["enabled"] is True
    env = unit["dropins"][0]["contents"]
    assert 'Environment="ETCD_NAME=etcd2"' in env
    assert ('Environment="ETCD_INITIAL_CLUSTER=etcd1=http://192.0.2.101:2380,'
            'etcd2=http://192.0.2.102:2380,etcd3=http://192.0.2.103:2380"') in env
    assert "ETCD_ADVERTISE_CLIENT_URLS=http://192.0.2.102:2379" in env
    assert fake.reported[-1].detail == "flatcar/ignition-etcd"


def test_flatcar_worker_finds_the_etcd_members(client: Client, fake: FakeStore) -> None:
    _etcd_cluster(fake)
    r = client.simulate_get("/config/flatcar/ignition", remote_addr="192.0.2.109")
    files = {f["path"]: f["contents"]["source"] for f in json.loads(r.text)["storage"]["files"]}
    assert files["/etc/hostname"] == "data:,w1%0A"
    assert files["/etc/astralboot-role"] == "data:,worker%0A"
    assert "192.0.2.101%3A2379%2Chttp%3A//192.0.2.102%3A2379" in files["/etc/profile.d/etcd.sh"]


def test_config_without_a_class_falls_back_to_the_plain_template(client: Client,
                                                                  fake: FakeStore) -> None:
    fake.add_machine(MAC, ip=IP, os="flatcar", name="plain")
    r = client.simulate_get("/config/flatcar/ignition")
    assert r.status_code == 200
    assert "systemd" not in json.loads(r.text)
    assert fake.reported[-1].detail == "flatcar/ignition"


def test_action_does_not_append_the_class(client: Client, fake: FakeStore) -> None:
    fake.add_machine(MAC, ip=IP, os="flatcar", machine_class="etcd")
    r = client.simulate_get("/action/flatcar/ignition")
    assert "systemd" not in json.loads(r.text)


def test_template_error_names_the_file_and_line(client: Client, fake: FakeStore,
                                                data: Path) -> None:
    fake.add_machine(MAC, ip=IP)
    (data / "boot/debian/template/broken.tmpl").write_text("line one\n{{ no_such_thing }}\n")
    r = client.simulate_get("/action/debian/broken")
    assert r.status_code == 500
    assert "boot/debian/template/broken.tmpl" in r.text
    assert "line 2" in r.text and "no_such_thing" in r.text


def test_sandbox_keeps_templates_away_from_python_internals(client: Client, fake: FakeStore,
                                                            data: Path) -> None:
    fake.add_machine(MAC, ip=IP)
    (data / "boot/debian/template/evil.tmpl").write_text(
        "{{ ''.__class__.__mro__[1].__subclasses__() }}")
    r = client.simulate_get("/action/debian/evil")
    assert r.status_code == 500
    assert "subclasses" not in r.text or "unsafe" in r.text.lower()


def test_sandbox_keeps_the_context_immutable(client: Client, fake: FakeStore,
                                             data: Path) -> None:
    fake.add_machine(MAC, ip=IP)
    (data / "boot/debian/template/mutate.tmpl").write_text("{{ labels.update({'a': 'b'}) }}")
    assert client.simulate_get("/action/debian/mutate").status_code == 500


# --- the original's Go templates --------------------------------------------------------

ORIGINAL_DEBIAN_START = (
    "#!ipxe{{ $serverIP := .BaseIP }}\n\n"
    "kernel http://{{ $serverIP }}/image/debian/linux ramdisk_size=13746 root=/dev/ram  "
    "auto=true priority=critical preseed/url=http://{{ $serverIP}}/action/debian/preseed\n"
    "initrd http://{{ $serverIP }}/image/debian/initrd.gz\nboot\n")

ORIGINAL_CLOUD_ETCD = (
    "#cloud-config\n\nhostname: {{ .Name }}\ncoreos:\n  etcd2:\n      name: {{ .Name }}\n"
    "      advertise-client-urls: http://{{ .IP }}:2379\n"
    "      initial-cluster: {{ range $index , $element := .Cluster.etcd.Leases}}"
    "{{ if $index}},{{end}}{{$element.Name}}=http://{{ $element.IP }}:2380{{ end }}\n"
    "  fleet:\n    metadata: \"role={{ .Lease.Class }}\"\n"
    "{{ if .Config.Spawn }}\n    spawn: yes\n{{ end }}\n")


def test_original_debian_start_template_still_boots(client: Client, data: Path) -> None:
    (data / "boot/debian/template/start.tmpl").write_text(ORIGINAL_DEBIAN_START)
    r = client.simulate_get(f"/boot/debian/{MAC}")
    assert r.status_code == 200
    assert ("kernel http://192.0.2.1:8080/image/debian/linux ramdisk_size=13746 root=/dev/ram "
            " auto=true priority=critical preseed/url=http://192.0.2.1:8080/action/debian/preseed"
            " initrd=initrd.gz\n") in r.text  # and UEFI-ready


def test_original_cloud_etcd_template_renders_the_cluster(client: Client, fake: FakeStore,
                                                          data: Path) -> None:
    _etcd_cluster(fake)
    (data / "boot/flatcar/template/cloud-etcd.tmpl").write_text(ORIGINAL_CLOUD_ETCD)
    r = client.simulate_get("/config/flatcar/cloud", remote_addr="192.0.2.101")
    assert r.status_code == 200, r.text
    assert "hostname: etcd1\n" in r.text
    assert "initial-cluster: etcd1=http://192.0.2.101:2380,etcd2=http://192.0.2.102:2380," \
           "etcd3=http://192.0.2.103:2380\n" in r.text
    assert 'metadata: "role=etcd"' in r.text
    assert "spawn" not in r.text


def test_go_constructs_outside_the_subset_fail_loudly() -> None:
    with pytest.raises(BadTemplate, match="printf"):
        compile_source("boot/x/template/t.tmpl", '{{ .Name }} {{ printf "%s" .Name }}')
    with pytest.raises(BadTemplate, match="not closed"):
        compile_source("boot/x/template/t.tmpl", "{{ if .Name }}x")


def test_jinja_templates_are_not_mistaken_for_go() -> None:
    assert not gotemplate.looks_like_go("{{ name }} {% if lease %}{{ lease.ip }}{% endif %}")
    assert gotemplate.looks_like_go("{{ .Name }}")
    assert gotemplate.looks_like_go("{{$x := .BaseIP}}")


INSTALLS = [("debian", "/action/debian/preseed", "d-i passwd/user-password-crypted password {}\n"),
            ("rocky", "/action/rocky/kickstart", "--iscrypted --password={}\n"),
            ("ubuntu", "/action/ubuntu/user-data", 'password: "{}"\n')]


@pytest.mark.parametrize("os_name, path, line", INSTALLS)
def test_installs_get_the_sites_password_hash_never_a_shipped_one(
        tmp_path: Path, data: Path, fake: FakeStore, os_name: str, path: str,
        line: str) -> None:
    from astralboot.services.httpd.app import create_app
    from httpd_support import make_config
    fake.add_machine(MAC, ip=IP, os=os_name)
    site_hash = "$6$Zq3saltsalt$" + "A" * 86
    for configured, expected in ((site_hash, site_hash), (None, "!")):
        extra = {"install__password_hash": configured} if configured else {}
        client = Client(create_app(fake, make_config(tmp_path, data, **extra)))
        r = client.simulate_get(path)
        assert r.status_code == 200, r.text
        assert line.format(expected) in r.text
        assert "astralbootsalt" not in r.text and "$6$" not in r.text.replace(site_hash, "")


def test_a_client_on_a_dual_stack_socket_is_known_by_its_ipv4_address(
        client: Client, fake: FakeStore) -> None:
    """systemd's ListenStream=80 hands IPv4 clients over as ::ffff:a.b.c.d."""
    fake.add_machine(MAC, ip=IP, os="debian", name="db1")
    r = client.simulate_get("/action/debian/preseed", remote_addr=f"::ffff:{IP}")
    assert r.status_code == 200 and "d-i netcfg/get_hostname string db1\n" in r.text
    assert fake.reported[-1].ip == IP
