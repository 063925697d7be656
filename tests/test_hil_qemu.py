"""The QEMU rig's build steps that need neither root nor emulation (the boot is in tests/hil).

Mirror discovery from apt sources in both formats, the layer keys, the install of a ``pip
--target`` tree into a guest root, the overlay copy, and the config a rig hands the guest.
"""

from __future__ import annotations

import re
import socket
import threading
import tomllib
from pathlib import Path

import pytest

from hil.qemu import build
from hil.qemu.boot import BootError, Console, _plain
from hil.qemu.build import BuildError, apply_overlay, host_mirror, install_site
from hil.qemu.rigconfig import image_config_path, with_values
from hil.qemu.targets import target


def test_mirror_from_deb822_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(build.MIRROR_ENV, raising=False)
    sources = tmp_path / "debian.sources"
    sources.write_text(
        "Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\n"
        "Components: main\n\n"
        "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\n"
        "Components: main\n"
    )
    assert host_mirror([sources]) == "http://mirror.example/debian"


def test_mirror_from_one_line_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(build.MIRROR_ENV, raising=False)
    other = tmp_path / "other.list"
    other.write_text("deb https://vendor.example/apt stable main\n")
    listing = tmp_path / "sources.list"
    listing.write_text(
        "# deb http://old.example/debian bookworm main\n"
        "deb [signed-by=/usr/share/keyrings/k.gpg] http://mirror.example/debian bookworm main\n"
    )
    assert host_mirror([other, listing]) == "http://mirror.example/debian"


def test_mirror_missing_says_what_to_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(build.MIRROR_ENV, raising=False)
    listing = tmp_path / "sources.list"
    listing.write_text("deb http://mirror.example/debian bullseye main\n")
    with pytest.raises(BuildError, match=build.MIRROR_ENV):
        host_mirror([listing, tmp_path / "absent.list"])
    monkeypatch.setenv(build.MIRROR_ENV, "http://set.example/debian")
    assert host_mirror([listing]) == "http://set.example/debian"


def test_keys_are_stable_and_follow_the_tree(monkeypatch: pytest.MonkeyPatch) -> None:
    arm64 = target("arm64")
    first, again = build.keys(arm64), build.keys(arm64)
    assert first == again
    monkeypatch.setattr(build, "BASE_PACKAGES", (*build.BASE_PACKAGES, "vim-tiny"))
    changed = build.keys(arm64)
    assert changed.base != first.base and changed.image != first.image
    assert (changed.deps, changed.dvrlink) == (first.deps, first.dvrlink), (
        "only the base layer's inputs changed"
    )


def test_tree_digest_sees_content_and_mode(tmp_path: Path) -> None:
    script = tmp_path / "post-build.sh"
    script.write_text("#!/bin/sh\n")
    before = build._tree_digest([script], tmp_path)
    script.chmod(0o755)
    after_mode = build._tree_digest([script], tmp_path)
    script.write_text("#!/bin/sh\nexit 0\n")
    after_text = build._tree_digest([script], tmp_path)
    assert len({before, after_mode, after_text}) == 3


def test_install_site_places_packages_and_rewrites_scripts(tmp_path: Path) -> None:
    site = tmp_path / "site"
    (site / "dvrlink/daemon").mkdir(parents=True)
    (site / "dvrlink/daemon/cli.py").write_text("def main(): pass\n")
    (site / "dvrlink-0.1.0.dist-info").mkdir()
    (site / "bin").mkdir()
    (site / "bin/dvrlinkd").write_text(
        "#!/host/venv/bin/python\nimport sys\nfrom dvrlink.daemon.cli import main\n"
    )
    root = tmp_path / "root"
    (root / "usr/bin").mkdir(parents=True)
    assert install_site(site, root) == ["dvrlinkd"]
    assert (root / build.SITE / "dvrlink/daemon/cli.py").is_file()
    assert (root / build.SITE / "dvrlink-0.1.0.dist-info").is_dir()
    script = (root / "usr/bin/dvrlinkd").read_text()
    assert script.startswith("#!/usr/bin/python3\nimport sys\n"), script
    assert (root / "usr/bin/dvrlinkd").stat().st_mode & 0o111
    assert (root / build.SITE_PTH).read_text() == f"/{build.SITE}\n"
    assert not (root / build.SITE / "bin").exists()


def test_overlay_replaces_files_and_keeps_links(tmp_path: Path) -> None:
    overlay = tmp_path / "overlay"
    (overlay / "etc/dvrlink").mkdir(parents=True)
    (overlay / "etc/dvrlink/dvrlinkd.toml").write_text("[device]\n")
    (overlay / "etc/localtime").symlink_to("/usr/share/zoneinfo/UTC")
    root = tmp_path / "root"
    (root / "etc/dvrlink").mkdir(parents=True)
    (root / "etc/dvrlink/dvrlinkd.toml").write_text("old\n")
    (root / "etc/localtime").write_text("a file before\n")
    assert apply_overlay(root, overlay) == ["/etc/dvrlink/dvrlinkd.toml", "/etc/localtime"]
    assert (root / "etc/dvrlink/dvrlinkd.toml").read_text() == "[device]\n"
    assert (root / "etc/localtime").is_symlink()
    assert apply_overlay(root, tmp_path / "absent") == []


def test_rig_config_sets_keys_in_their_sections_only() -> None:
    text = (
        '# comment\n[device]\nserial = "UNPROVISIONED"  # label\n\n[broker]\nhost = "broker.example.net"\n'
        '[modem]\nport = "/dev/ttyS2"\n'
    )
    out = with_values(
        text, {"device": {"serial": "DL-QEMU-0001"}, "broker": {"host": "10.0.2.2", "port": 4000}}
    )
    parsed = tomllib.loads(out)
    assert parsed["device"]["serial"] == "DL-QEMU-0001"
    assert parsed["broker"] == {"host": "10.0.2.2", "port": 4000}
    assert parsed["modem"]["port"] == "/dev/ttyS2", "a key of the same name in another section stays"
    assert out.startswith("# comment\n[device]\n")


def test_rig_config_refuses_a_missing_section() -> None:
    with pytest.raises(ValueError, match=r"no \[broker\] section"):
        with_values("[device]\n", {"broker": {"host": "10.0.2.2"}})


def test_rig_config_from_the_image_config_reads_back() -> None:
    out = with_values(
        image_config_path().read_text(),
        {"device": {"serial": "DL-QEMU-0001"}, "broker": {"host": "10.0.2.2", "port": 4000}},
    )
    assert tomllib.loads(out)["broker"]["port"] == 4000


def _mk_paths(text: str) -> str:
    """dvrlink.mk with continuation lines joined."""
    return re.sub(r"\\\n\s*", " ", text)


def test_the_image_gets_what_dvrlink_mk_installs_for_systemd() -> None:
    mk = _mk_paths((build.PACKAGE_DIR / "dvrlink.mk").read_text())
    names = {
        "$(@D)": str(build.REPO),
        "$(DVRLINK_PKGDIR)": str(build.PACKAGE_DIR),
        "$(BR2_EXTERNAL_DVRLINK_PATH)": str(build.REPO / "buildroot"),
    }
    installs: set[tuple[str, str, int]] = set()
    for block in re.finditer(r"define (\w+)\n(.*?)\nendef", mk, re.S):
        if block.group(1) == "DVRLINK_INSTALL_INIT_SYSV":
            continue  # the BusyBox image's init script
        for mode, source, dest in re.findall(
            r"\$\(INSTALL\) -D -m (\d+)\s+(\S+)\s+([^\s;]+)", block.group(2)
        ):
            resolved = source
            for name, value in names.items():
                resolved = resolved.replace(name, value)
            installs.add((resolved, dest.removeprefix("$(TARGET_DIR)/"), int(mode, 8)))
    assert installs, "no $(INSTALL) lines found in dvrlink.mk: the parser needs updating"
    table = {(str(source), dest, mode) for source, dest, mode in build.PACKAGE_INSTALLS}
    assert table == installs, f"hil.qemu.build.PACKAGE_INSTALLS differs from dvrlink.mk: {table ^ installs}"


def test_the_image_drops_what_dvrlink_mk_removes() -> None:
    mk = _mk_paths((build.PACKAGE_DIR / "dvrlink.mk").read_text())
    removed = {
        path.removeprefix("$(TARGET_DIR)/").replace("$(PYTHON3_VERSION_MAJOR)", build.GUEST_PYTHON)
        for command in re.findall(r"^\s*rm -r?f (.+)$", mk, re.M)
        for path in command.split()
    }
    assert removed, "no rm lines found in dvrlink.mk: the parser needs updating"
    assert removed == set(build.REMOVED_FROM_IMAGE), removed ^ set(build.REMOVED_FROM_IMAGE)


def test_console_text_loses_escapes_even_split_across_reads() -> None:
    link = "\x1b]8;;file://dvrlink/x\x1b\\dvrlinkd\x1b]8;;\x1b\\"  # an OSC 8 hyperlink, as systemctl prints
    raw = f"\x1b[0;32m  OK  \x1b[0m] Started {link}\r\n\x1b[?2004hroot# "
    whole, carry = _plain(raw, final=True)
    assert (whole, carry) == ("  OK  ] Started dvrlinkd\nroot# ", "")
    pieces, carry = [], ""
    for char in raw:
        text, carry = _plain(carry + char, final=False)
        pieces.append(text)
    assert "".join(pieces) + carry == whole, "byte-by-byte reads give other text than one read"


class FakeShell:
    """QEMU's console socket with a root shell behind it that answers the rig's framed commands,
    one byte per write, with kernel noise and colour escapes."""

    def __init__(self, path: Path, answers: dict[str, str]) -> None:
        self.answers = answers
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(path))
        self.server.listen(1)
        self.thread = threading.Thread(target=self._serve)
        self.thread.start()

    def _send(self, conn: socket.socket, text: str) -> None:
        for byte in text.encode():
            conn.sendall(bytes([byte]))

    def _serve(self) -> None:
        conn, _ = self.server.accept()
        with conn:
            self._send(conn, "[   1.0] noise\r\n\x1b[0;1;39mroot@dvrlink\x1b[0m:~# ")
            buffer = b""
            while data := conn.recv(4096):
                buffer += data
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    text = line.decode()
                    framed = re.fullmatch(r"echo @@B(\w+); (.*); echo @@E\1:\$\?", text)
                    assert framed, text
                    tag, command = framed.groups()
                    reply = self.answers.get(command, "")
                    self._send(
                        conn,
                        f"{text}\r\n@@B{tag}\r\n\x1b[1m{reply}\x1b[0m\r\n@@E{tag}:0\r\nroot@dvrlink:~# ",
                    )

    def close(self) -> None:
        self.server.close()
        self.thread.join(10)
        assert not self.thread.is_alive()


def test_console_runs_framed_commands_over_the_socket(tmp_path: Path) -> None:
    shell = FakeShell(tmp_path / "console.sock", {"systemctl is-active dvrlinkd": "active"})
    console = Console(tmp_path / "console.sock", tmp_path / "console.text")
    try:
        console.connect(timeout=10)
        console.wait_for(r"root@dvrlink:\S*# ", timeout=10)
        assert console.run("systemctl is-active dvrlinkd", timeout=10) == "active"
        assert console.run("true", timeout=10) == ""
        with pytest.raises(BootError, match="no console output matching 'never'") as failed:
            console.wait_for("never", timeout=0.2)
        assert "@@E" in str(failed.value), "the error quotes the console's last lines"
    finally:
        console.close()
        shell.close()
    assert "\x1b" in (tmp_path / "console.text").read_text(), "the log keeps the raw bytes"
