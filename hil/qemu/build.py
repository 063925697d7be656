"""``python -m hil.qemu build``: a root filesystem image from Debian's packages and this tree's files.

The image is made of cached layers, each in its own directory named by a hash of its inputs:

| layer | inputs | holds |
|---|---|---|
| ``base-<key>`` | release, arch, package list, recipe | ``rootfs.tar``, ``vmlinuz``, ``initrd.img`` |
| ``deps-<key>`` | dvrlink's dependencies, wheel platforms | their wheels and installed tree |
| ``dvrlink-<key>`` | the package sources, ``pyproject.toml`` | dvrlink's wheel and installed tree |
| ``image-<key>`` | the keys above, the image's and the rig's files | ``rootfs.ext4`` |

A change to dvrlink rebuilds only its layer and the image; a rebuild with nothing changed finds
the image and returns. Python packages are installed from the host with pip's ``--target`` and the
guest's platform tags, so nothing runs pip under emulation and no host variable (CA bundles,
pip settings) reaches the guest.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from hil.qemu.targets import Target

REPO = Path(__file__).resolve().parents[2]
RELEASE = "bookworm"
"""Debian release of the guest: its python3 (3.11) must match the wheels' ``--python-version``."""
GUEST_PYTHON = "3.11"
BASE_RECIPE = 1
"""Bump when the base recipe changes in a way its package list does not show."""
DEPS_RECIPE = 1
DEPS_SOURCE_RECIPE = 1
"""Bump when the build chroot's recipe (for ``Target.source_wheels``) changes."""
IMAGE_RECIPE = 3
BASE_PACKAGES = (
    "systemd",
    "systemd-sysv",
    "udev",
    "dbus",
    "kmod",
    "iproute2",
    "procps",
    "netbase",
    "python3",
    "busybox",  # httpd: a local service for forwards; the armhf image's init
    "ppp",  # the guest's own pppd dials the modem emulator (later)
    "mobile-broadband-provider-info",  # the board config's [modem] provider_database
    "initramfs-tools",
    "openssl",  # `openssl speed`: bench.data_plane's cipher baseline, as BR2_PACKAGE_LIBOPENSSL_BIN
    # The live view's software encoder (daemon/live_view.py: V4L2 in, libx264, RTSP out); on
    # Buildroot BR2_PACKAGE_FFMPEG with BR2_PACKAGE_FFMPEG_GPL and BR2_PACKAGE_X264.
    "ffmpeg",
)
"""The systemd image's (arm64) base packages."""
BUSYBOX_BASE_PACKAGES = (
    "busybox",  # init, syslogd, udhcpc, ifup, httpd: BusyBox as on the Buildroot image
    "udhcpc",  # the lease script busybox's udhcpc runs (/etc/udhcpc/default.script)
    "udev",  # the Buildroot image's eudev: module autoloading, the overlay's modem rules
    "kmod",
    "iproute2",
    "netbase",
    "python3",
    "ppp",
    "mobile-broadband-provider-info",
    "initramfs-tools",
    "openssl",  # `openssl speed` beside the forward (bench.data_plane); the libraries are python3's
)
"""The BusyBox-init image's (armhf) base packages: no systemd."""
BUILD_PACKAGES = ("gcc", "libc6-dev", "python3-dev", "python3-pip", "libssl-dev", "libffi-dev", "pkg-config")
"""The build chroot's extra packages, for the dependencies compiled from source."""
EXTENSION_SOURCES = ("protocol/_dataplane_seal.c",)
"""dvrlink's C extension (setup.py): compiled for the guest in the build chroot, since the
wheel is built on the host (``DVRLINK_PURE=1``, a pure wheel)."""
EXTENSION_MODULE = "dvrlink/protocol/_dataplane_seal"
EXT_RECIPE = 1
BUILD_WHEEL_BACKENDS = ("setuptools", "wheel", "packaging")
"""Build backends the sdists need, handed to the build chroot as wheels (it has no network)."""
INITRD_MODULES = ("virtio_pci", "virtio_blk", "virtio_net", "ext4")
"""What the initrd needs to mount the root disk; everything else loads from the root filesystem."""
CACHE_ENV = "DVRLINK_HIL_CACHE"
MIRROR_ENV = "DVRLINK_HIL_MIRROR"
PASSED_ENV = ("http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY")
"""The only host variables a chroot command sees (besides a fixed PATH and locale)."""
TOOLS = {
    "debootstrap": "debootstrap",
    "chroot": "coreutils",
    "mkfs.ext4": "e2fsprogs",
    "systemd-sysusers": "systemd",
    "update-binfmts": "binfmt-support",
}
QEMU_USER = {"arm64": ("qemu-aarch64", "qemu-user-static"), "armhf": ("qemu-arm", "qemu-user-static")}
"""binfmt_misc handler and the Debian package that registers it, per target."""
BINFMT = Path("/proc/sys/fs/binfmt_misc")
GUEST_FILES = Path(__file__).resolve().parent / "guest"
BOARD_DIR = REPO / "buildroot/board/dvrlink"
PACKAGE_DIR = REPO / "buildroot/package/dvrlink"
SITE = f"usr/lib/python{GUEST_PYTHON}/site-packages"
"""Where Buildroot's python-package infrastructure installs; Debian's python3 learns it from SITE_PTH."""
SITE_PTH = "usr/lib/python3/dist-packages/dvrlink-hil-site.pth"


def base_packages(target: Target) -> tuple[str, ...]:
    """The Debian packages debootstrap installs for ``target``'s init system."""
    return BUSYBOX_BASE_PACKAGES if target.init == "busybox" else BASE_PACKAGES


PACKAGE_INSTALLS: tuple[tuple[Path, str, int], ...] = (
    (REPO / "systemd/dvrlinkd.service", "usr/lib/systemd/system/dvrlinkd.service", 0o644),
    (REPO / "systemd/dvrlink.sysusers.conf", "usr/lib/sysusers.d/dvrlink.conf", 0o644),
    (REPO / "systemd/dvrlinkd-pppd.conf", "usr/share/dvrlink/dvrlinkd-pppd.conf", 0o644),
    (PACKAGE_DIR / "50-dvrlink.preset", "usr/lib/systemd/system-preset/50-dvrlink.preset", 0o644),
    (REPO / "daemon/dvrlinkd.example.toml", "usr/share/dvrlink/dvrlinkd.example.toml", 0o644),
    (REPO / "daemon/dvrlinkd.example.toml", "etc/dvrlink/dvrlinkd.toml", 0o644),
)
"""The files dvrlink.mk installs in a systemd image (source, path in the image, mode);
tests/test_hil_qemu.py checks this table against the .mk file."""
PACKAGE_INSTALLS_SYSV: tuple[tuple[Path, str, int], ...] = (
    (BOARD_DIR / "S95dvrlinkd", "etc/init.d/S95dvrlinkd", 0o755),
    (REPO / "daemon/dvrlinkd.example.toml", "usr/share/dvrlink/dvrlinkd.example.toml", 0o644),
    (REPO / "daemon/dvrlinkd.example.toml", "etc/dvrlink/dvrlinkd.toml", 0o644),
)
"""The files dvrlink.mk installs in a BusyBox-init image (tests/test_hil_qemu_armhf.py checks it)."""
REMOVED_FROM_IMAGE = (
    f"{SITE}/dvrlink/broker",
    f"{SITE}/dvrlink/viewer",
    "usr/bin/dvrlink-broker",
    "usr/bin/dvrlink",
)
"""What dvrlink.mk removes after the install: the broker and the viewer's CLI (they need aiohttp)."""
REMOVED_FROM_BUSYBOX_IMAGE = ("usr/lib/udev/hwdb.bin", "etc/udev/hwdb.bin")
"""What the BusyBox board's defconfig leaves out of Debian's udev: its eudev is built without the
hardware database (``BR2_PACKAGE_EUDEV_ENABLE_HWDB`` unset in dvrlink_qemu_arm_vexpress_defconfig).
The modem rules match USB attributes, not hwdb properties; udevd would map the 2.8 MB file and
keep it in the 128 MB board's page cache."""


class BuildError(Exception):
    """A step of the image build failed; the message names it and what to do."""


def cache_root() -> Path:
    """Where the layers live: ``$DVRLINK_HIL_CACHE``, else ``$XDG_CACHE_HOME/dvrlink-hil``."""
    if explicit := os.environ.get(CACHE_ENV):
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "dvrlink-hil"


def host_mirror(sources: Sequence[Path] | None = None, release: str = RELEASE) -> str:
    """The Debian mirror URL the host's apt uses for ``release`` (``$DVRLINK_HIL_MIRROR`` wins).

    Raises:
        BuildError: no apt source of the host names ``release``.
    """
    if explicit := os.environ.get(MIRROR_ENV):
        return explicit
    if sources is None:
        apt = Path("/etc/apt")
        sources = [apt / "sources.list", *sorted((apt / "sources.list.d").glob("*"))]
    for path in sources:
        try:
            text = path.read_text()
        except OSError:
            continue
        if path.suffix == ".sources":
            for stanza in re.split(r"\n\s*\n", text):
                fields: dict[str, list[str]] = {
                    m.group(1).lower(): m.group(2).split()
                    for m in re.finditer(r"^([A-Za-z-]+):\s*(.*)$", stanza, re.M)
                }
                if release in fields.get("suites", []) and "deb" in fields.get("types", []):
                    return fields["uris"][0]
        else:
            for line in text.splitlines():
                words = re.sub(r"\[[^]]*\]", "", line.split("#", 1)[0]).split()
                if len(words) >= 3 and words[0] == "deb" and words[2] == release:
                    return words[1]
    raise BuildError(
        f"no apt source on this host names Debian {release}: set {MIRROR_ENV} to a Debian mirror URL"
    )


def _key(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def _tree_digest(paths: Sequence[Path], base: Path) -> str:
    """A digest of the files' paths (relative to ``base``), modes and contents."""
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(str(path.relative_to(base)).encode() + b"\0")
        digest.update(oct(path.stat().st_mode & 0o777).encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def _files_under(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    return [p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"]


def _pyproject() -> dict[str, object]:
    with (REPO / "pyproject.toml").open("rb") as f:
        return tomllib.load(f)


def dependencies() -> list[str]:
    """dvrlink's declared runtime dependencies (``[project] dependencies``)."""
    project = _pyproject()["project"]
    assert isinstance(project, dict)
    return [str(d) for d in project["dependencies"]]


def package_dirs() -> list[Path]:
    """The folders the dvrlink distribution is built from (``[tool.setuptools.package-dir]``)."""
    tool = _pyproject()["tool"]
    assert isinstance(tool, dict)
    return [REPO / str(d) for d in tool["setuptools"]["package-dir"].values()]


def product_files() -> list[Path]:
    """The files the image takes from this tree besides the Python package: units, config, board."""
    files = [
        REPO / "systemd/dvrlinkd.service",
        REPO / "systemd/dvrlink.sysusers.conf",
        REPO / "systemd/dvrlinkd-pppd.conf",
        REPO / "daemon/dvrlinkd.example.toml",
    ]
    return [f for f in files if f.is_file()] + _files_under(BOARD_DIR) + _files_under(PACKAGE_DIR)


@dataclass(frozen=True, slots=True)
class Keys:
    """The cache keys of one build's layers, computed without building anything."""

    base: str
    deps: str
    dvrlink: str
    image: str
    ext: str = ""
    """The compiled extension's layer (``EXTENSION_SOURCES`` built in the build chroot)."""


def guest_files(target: Target) -> list[Path]:
    """The rig's own files for ``target`` (its folders of hil/qemu/guest)."""
    return [f for d in target.guest_dirs for f in _files_under(GUEST_FILES / d)]


def keys(target: Target) -> Keys:
    """The layer keys for ``target`` from the inputs as they are now (hashes files only)."""
    base = _key(
        BASE_RECIPE,
        RELEASE,
        target.debian_arch,
        base_packages(target),
        target.kernel_package,
        INITRD_MODULES,
    )
    deps = _key(DEPS_RECIPE, GUEST_PYTHON, target.wheel_platforms, dependencies())
    if target.source_wheels:
        # Compiled in a chroot made from the base: its packages are inputs too.
        deps = _key(
            deps, DEPS_SOURCE_RECIPE, base, BUILD_PACKAGES, BUILD_WHEEL_BACKENDS, target.source_wheels
        )
    sources = [p for d in package_dirs() for p in _files_under(d) if p.suffix != ".so"]
    dvrlink = _key(_tree_digest([*sources, REPO / "pyproject.toml", REPO / "setup.py"], REPO))
    ext = _key(EXT_RECIPE, base, BUILD_PACKAGES, _tree_digest([REPO / s for s in EXTENSION_SOURCES], REPO))
    image = _key(
        IMAGE_RECIPE,
        base,
        deps,
        dvrlink,
        ext,
        _tree_digest(product_files(), REPO),
        _tree_digest(guest_files(target), GUEST_FILES),
    )
    return Keys(base, deps, dvrlink, image, ext)


@dataclass(frozen=True, slots=True)
class Image:
    """A built image: the root disk, the kernel and initrd to boot it with, and what went in."""

    directory: Path
    rootfs: Path
    kernel: Path
    initrd: Path
    manifest: dict[str, object]


def find_image(target: Target, cache: Path | None = None) -> Image | None:
    """The cached image for the tree as it is now, or None if it has not been built."""
    directory = (cache or cache_root()) / target.name / f"image-{keys(target).image}"
    return _load_image(directory)


def _load_image(directory: Path) -> Image | None:
    manifest_path = directory / "manifest.json"
    if not manifest_path.is_file():
        return None
    manifest = json.loads(manifest_path.read_text())
    base = Path(str(manifest["base_dir"]))
    return Image(directory, directory / "rootfs.ext4", base / "vmlinuz", base / "initrd.img", manifest)


class Progress:
    """Step lines with elapsed times on a stream; command output goes to a log file."""

    def __init__(self, target: Target, log: Path, out: TextIO = sys.stdout) -> None:
        self.target = target
        self.log = log
        self.out = out
        self.started = time.monotonic()

    def say(self, text: str) -> None:
        print(
            f"[{self.target.name} {time.monotonic() - self.started:6.1f}s] {text}", file=self.out, flush=True
        )

    def run(
        self,
        argv: Sequence[str],
        *,
        env: dict[str, str] | None = None,
        show: str | None = None,
        what: str,
        timeout: float = 3600,
    ) -> None:
        """Run ``argv``, appending its output to the log; print lines matching ``show``.

        Raises:
            BuildError: the command failed or ran past ``timeout``; the message names ``what``
            and quotes the end of its output.
        """
        deadline = time.monotonic() + timeout
        tail: list[str] = []
        with self.log.open("a") as log:
            log.write(f"$ {' '.join(argv)}\n")
            log.flush()
            proc = subprocess.Popen(
                list(argv),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=env,
                text=True,
                errors="replace",
            )
            assert proc.stdout is not None
            for line in proc.stdout:
                log.write(line)
                tail = [*tail[-29:], line]
                if show and re.search(show, line):
                    self.say("  " + line.rstrip()[:100])
                if time.monotonic() > deadline:
                    proc.kill()
                    break
            code = proc.wait()
        if code != 0:
            raise BuildError(f"{what} failed (exit {code}; full output in {self.log}):\n{''.join(tail)}")


def _clean_env() -> dict[str, str]:
    """The environment for debootstrap and chroot commands: no host CA, pip or language settings."""
    env = {k: v for k, v in os.environ.items() if k in PASSED_ENV}
    env.update(
        PATH="/usr/sbin:/usr/bin:/sbin:/bin",
        LC_ALL="C.UTF-8",
        LANG="C.UTF-8",
        HOME="/root",
        DEBIAN_FRONTEND="noninteractive",
    )
    return env


def check_host(target: Target) -> None:
    """Check the host can build for ``target``: root, the tools, and qemu-user via binfmt_misc.

    Mounts binfmt_misc and enables the qemu-user handler when they are missing.

    Raises:
        BuildError: naming the missing tool and the Debian package that has it.
    """
    if os.geteuid() != 0:
        raise BuildError("building the image needs root (debootstrap, chroot): run it with sudo")
    missing = sorted({pkg for tool, pkg in TOOLS.items() if shutil.which(tool) is None})
    handler, pkg = QEMU_USER[target.name]
    if shutil.which(f"{handler}-static") is None:
        missing.append(pkg)
    if missing:
        raise BuildError(
            f"missing Debian packages for the image build: {' '.join(missing)} "
            f"(apt-get install {' '.join(missing)}, or `make hil` as root)"
        )
    if not (BINFMT / "status").exists():
        result = subprocess.run(
            ["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT)],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise BuildError(f"binfmt_misc is not mounted and mounting it failed: {result.stderr.strip()}")
    if not (BINFMT / handler).exists():
        subprocess.run(["update-binfmts", "--enable", handler], capture_output=True, check=False)
    if not (BINFMT / handler).exists():
        raise BuildError(
            f"no binfmt_misc handler {handler} in {BINFMT}: reinstall {pkg} (its postinst registers it), "
            f"or run `update-binfmts --enable {handler}`"
        )


@contextlib.contextmanager
def _chroot_mounts(root: Path) -> Iterator[None]:
    mounted: list[Path] = []
    try:
        for fs, point, extra in (
            ("proc", "proc", ["-t", "proc"]),
            ("sysfs", "sys", ["-t", "sysfs"]),
            ("/dev", "dev", ["--bind"]),
        ):
            subprocess.run(["mount", *extra, fs, str(root / point)], check=True)
            mounted.append(root / point)
        yield
    finally:
        for mount_point in reversed(mounted):
            if subprocess.run(["umount", str(mount_point)], check=False).returncode != 0:
                subprocess.run(["umount", "-l", str(mount_point)], check=False)


def _in_chroot(root: Path, *argv: str) -> list[str]:
    env = [f"{k}={v}" for k, v in _clean_env().items()]
    return ["chroot", str(root), "/usr/bin/env", "-i", *env, *argv]


def _publish(work: Path, final: Path, manifest: dict[str, object]) -> None:
    """Write the manifest last and move the finished layer into place (a crash leaves only .tmp)."""
    (work / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    if final.exists():
        shutil.rmtree(final)
    work.rename(final)


def _fresh(directory: Path) -> Path:
    work = directory.with_name(directory.name + ".tmp")
    if work.exists():
        subprocess.run(["umount", "-R", "-l", str(work / "root/proc")], capture_output=True, check=False)
        shutil.rmtree(work)
    work.mkdir(parents=True)
    return work


def build_base(target: Target, key: str, arch_dir: Path, progress: Progress) -> Path:
    """debootstrap the release with the base packages, add the kernel and a small initrd, tar it."""
    final = arch_dir / f"base-{key}"
    if (final / "manifest.json").is_file():
        progress.say(f"base {key}: cached")
        return final
    mirror = host_mirror()
    work = _fresh(final)
    root = work / "root"
    progress.say(
        f"base {key}: debootstrap {RELEASE} {target.debian_arch} from {mirror} (first build: minutes)"
    )
    progress.run(
        [
            "debootstrap",
            f"--arch={target.debian_arch}",
            "--variant=minbase",
            f"--include={','.join(base_packages(target))}",
            RELEASE,
            str(root),
            mirror,
        ],
        env=_clean_env(),
        show=r"^I: (Retrieving Release|Validating Packages|Installing core|Unpacking the base"
        r"|Configuring the base|Base system installed)",
        what=f"debootstrap of Debian {RELEASE} for {target.debian_arch}",
    )
    conf = root / "etc/initramfs-tools"
    (conf / "conf.d").mkdir(parents=True, exist_ok=True)
    (conf / "conf.d/dvrlink-hil").write_text("MODULES=list\nCOMPRESS=gzip\n")
    with (conf / "modules").open("a") as modules:
        modules.write("".join(f"{m}\n" for m in INITRD_MODULES))
    policy = root / "usr/sbin/policy-rc.d"
    policy.write_text("#!/bin/sh\nexit 101\n")
    policy.chmod(0o755)
    progress.say(f"base {key}: kernel {target.kernel_package} and initrd (under qemu-user)")
    with _chroot_mounts(root):
        progress.run(
            _in_chroot(
                root, "apt-get", "install", "-y", "-q", "--no-install-recommends", target.kernel_package
            ),
            show=r"^(Setting up linux-image|update-initramfs)",
            what=f"installing {target.kernel_package} in the {target.debian_arch} root",
        )
        progress.run(_in_chroot(root, "apt-get", "clean"), what="apt-get clean")
    policy.unlink()
    kernels = sorted((root / "boot").glob("vmlinuz-*"))
    initrds = sorted((root / "boot").glob("initrd.img-*"))
    if not kernels or not initrds:
        raise BuildError(f"no kernel or initrd in {root / 'boot'} after installing {target.kernel_package}")
    shutil.copy(kernels[-1], work / "vmlinuz")
    shutil.copy(initrds[-1], work / "initrd.img")
    progress.say(f"base {key}: packing rootfs.tar")
    progress.run(
        ["tar", "--numeric-owner", "--xattrs", "-C", str(root), "-cf", str(work / "rootfs.tar"), "."],
        what="packing the base root filesystem",
    )
    shutil.rmtree(root)
    _publish(
        work,
        final,
        {
            "layer": "base",
            "release": RELEASE,
            "arch": target.debian_arch,
            "mirror": mirror,
            "packages": list(base_packages(target)),
            "kernel": kernels[-1].name.removeprefix("vmlinuz-"),
            "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
    )
    return final


def _pip_target_args(target: Target) -> list[str]:
    args = ["--only-binary=:all:", "--python-version", GUEST_PYTHON, "--implementation", "cp"]
    for platform in target.wheel_platforms:
        args += ["--platform", platform]
    return args


def source_requirements(names: Sequence[str], wanted: Sequence[str]) -> list[str]:
    """Requirements for the sdists of ``names``: dvrlink's own specifier where it names one.

    A name dvrlink does not require directly (a dependency's dependency) is taken bare, so pip
    picks its newest release, as the resolver would for the wheels.
    """
    declared = {re.split(r"[<>=!~;\[ ]", w, maxsplit=1)[0].lower().replace("_", "-"): w for w in wanted}
    return [declared.get(n.lower().replace("_", "-"), n) for n in names]


def build_source_wheels(
    target: Target, base: Path, work: Path, progress: Progress, wanted: Sequence[str]
) -> Path:
    """Compile ``target.source_wheels`` from their sdists in a build chroot under qemu-user.

    The chroot is the base root filesystem plus ``BUILD_PACKAGES``; the sdists and the build
    backends' wheels are downloaded on the host, so pip in the chroot runs without network
    (``--no-index``) and sees none of the host's pip or CA settings. Only the wheels are kept;
    the chroot is removed. Returns the folder of the built wheels.
    """
    pip = [sys.executable, "-m", "pip"]
    src = work / "src"
    sources = source_requirements(target.source_wheels, wanted)
    progress.say(f"deps: sdists of {', '.join(sources)} and build backends (host pip)")
    progress.run(
        [*pip, "download", "-q", "--no-deps", "--no-binary=:all:", "-d", str(src), *sources],
        what=f"downloading the sdists of {', '.join(sources)}",
        timeout=900,
    )
    progress.run(
        [*pip, "download", "-q", "--no-deps", "--only-binary=:all:", "-d", str(src), *BUILD_WHEEL_BACKENDS],
        what="downloading the build backends' wheels",
        timeout=900,
    )
    root = _build_chroot_root(target, base, work, progress, "deps")
    shutil.copytree(src, root / "tmp/src")
    sdists = sorted(p.name for p in src.iterdir() if not p.name.endswith(".whl"))
    with _chroot_mounts(root):
        _install_build_packages(root, target, progress)
        progress.say(f"deps: compiling {', '.join(sdists)} (under qemu-user: minutes)")
        progress.run(
            _in_chroot(
                root,
                "python3",
                "-m",
                "pip",
                "wheel",
                "--no-deps",
                "--no-index",
                "--no-cache-dir",
                "--find-links=/tmp/src",
                "-w",
                "/tmp/out",
                *(f"/tmp/src/{name}" for name in sdists),
            ),
            show=r"(Building wheel for|Created wheel for)",
            what=f"compiling {', '.join(sdists)} in the {target.debian_arch} build chroot",
        )
    built = work / "built"
    shutil.copytree(root / "tmp/out", built)
    shutil.rmtree(root)
    return built


def _build_chroot_root(target: Target, base: Path, work: Path, progress: Progress, layer: str) -> Path:
    """The base root filesystem unpacked under ``work``, with services kept from starting."""
    root = work / "root"
    root.mkdir()
    progress.say(f"{layer}: build chroot from the base, with {' '.join(BUILD_PACKAGES)} (under qemu-user)")
    progress.run(
        ["tar", "--numeric-owner", "-C", str(root), "-xf", str(base / "rootfs.tar")],
        what="unpacking the base for the build chroot",
    )
    policy = root / "usr/sbin/policy-rc.d"
    policy.write_text("#!/bin/sh\nexit 101\n")
    policy.chmod(0o755)
    return root


def _install_build_packages(root: Path, target: Target, progress: Progress) -> None:
    progress.run(
        _in_chroot(root, "apt-get", "install", "-y", "-q", "--no-install-recommends", *BUILD_PACKAGES),
        show=r"^Setting up (gcc-\d+ |python3-dev|libssl-dev)",
        what=f"installing the build packages in the {target.debian_arch} build chroot",
    )


def build_extension(target: Target, key: str, arch_dir: Path, progress: Progress, base: Path) -> Path:
    """Compile dvrlink's C extension for the guest in a build chroot under qemu-user (the guest's
    gcc, python3-dev and libssl-dev); keeps only the module, named with the guest's suffix."""
    final = arch_dir / f"ext-{key}"
    if (final / "manifest.json").is_file():
        progress.say(f"ext {key}: cached")
        return final
    work = _fresh(final)
    root = _build_chroot_root(target, base, work, progress, "ext")
    (root / "tmp/ext").mkdir(parents=True)
    for source in EXTENSION_SOURCES:
        shutil.copy2(REPO / source, root / "tmp/ext" / Path(source).name)
    sources = " ".join(f"/tmp/ext/{Path(source).name}" for source in EXTENSION_SOURCES)
    name = Path(EXTENSION_MODULE).name
    script = (
        "suffix=$(python3 -c \"import sysconfig; print(sysconfig.get_config_var('EXT_SUFFIX'))\") && "
        f"gcc -O2 -shared -fPIC $(python3-config --includes) {sources} -lcrypto "
        f'-o "/tmp/ext/{name}$suffix"'
    )
    with _chroot_mounts(root):
        _install_build_packages(root, target, progress)
        progress.say(f"ext {key}: compiling {', '.join(EXTENSION_SOURCES)} (under qemu-user)")
        progress.run(_in_chroot(root, "sh", "-c", script), what="compiling dvrlink's C extension")
    [module] = list((root / "tmp/ext").glob(f"{name}*.so"))
    shutil.copy2(module, work / module.name)
    shutil.rmtree(root)
    _publish(work, final, {"layer": "ext", "module": module.name})
    return final


def install_extension(ext: Path, root: Path) -> None:
    """Put the compiled module beside the package it belongs to in the guest's site-packages."""
    [module] = list(ext.glob("*.so"))
    shutil.copy2(module, root / SITE / Path(EXTENSION_MODULE).parent / module.name)


def build_deps(
    target: Target, key: str, arch_dir: Path, progress: Progress, base: Path | None = None
) -> Path:
    """Download the dependencies' wheels for the guest's platform and install them into ``site``.

    ``target.source_wheels`` are compiled first in a build chroot made from ``base``; the
    download then takes them from there and the rest from the index.
    """
    final = arch_dir / f"deps-{key}"
    if (final / "manifest.json").is_file():
        progress.say(f"deps {key}: cached")
        return final
    work = _fresh(final)
    wanted = dependencies()
    pip = [sys.executable, "-m", "pip"]
    compiled: list[str] = []
    find_links: list[str] = []
    if target.source_wheels:
        if base is None:
            raise BuildError(f"the {target.name} dependencies are compiled in a chroot made from the base")
        built = build_source_wheels(target, base, work, progress, wanted)
        compiled = sorted(p.name for p in built.glob("*.whl"))
        find_links = [f"--find-links={built}"]
    progress.say(f"deps {key}: wheels for {target.wheel_platforms[0]}: {', '.join(wanted)}")
    progress.run(
        [*pip, "download", "-q", *_pip_target_args(target), *find_links, "-d", str(work / "wheels"), *wanted],
        what=f"downloading wheels for {target.name}",
        timeout=900,
    )
    progress.run(
        [
            *pip,
            "install",
            "-q",
            "--no-index",
            "--find-links",
            str(work / "wheels"),
            "--target",
            str(work / "site"),
            *_pip_target_args(target),
            *wanted,
        ],
        what=f"installing the {target.name} wheels into a tree",
    )
    _publish(
        work,
        final,
        {
            "layer": "deps",
            "requirements": wanted,
            "wheels": sorted(p.name for p in (work / "wheels").iterdir()),
            "compiled": compiled,
        },
    )
    return final


def build_dvrlink(target: Target, key: str, arch_dir: Path, progress: Progress) -> Path:
    """Build dvrlink's wheel from this tree and install it (no dependencies) into ``site``."""
    final = arch_dir / f"dvrlink-{key}"
    if (final / "manifest.json").is_file():
        progress.say(f"dvrlink {key}: cached")
        return final
    work = _fresh(final)
    progress.say(f"dvrlink {key}: wheel from {REPO}")
    pip = [sys.executable, "-m", "pip"]
    progress.run(
        [*pip, "wheel", "-q", "--no-deps", "-w", str(work / "wheel"), str(REPO)],
        what="building dvrlink's wheel",
        env={**os.environ, "DVRLINK_PURE": "1"},  # the C extension: build_extension, for the guest
    )
    [wheel] = list((work / "wheel").glob("dvrlink-*.whl"))
    progress.run(
        [
            *pip,
            "install",
            "-q",
            "--no-deps",
            "--target",
            str(work / "site"),
            *_pip_target_args(target),
            str(wheel),
        ],
        what="installing dvrlink's wheel into a tree",
    )
    _publish(
        work,
        final,
        {"layer": "dvrlink", "wheel": wheel.name, "sha256": hashlib.sha256(wheel.read_bytes()).hexdigest()},
    )
    return final


def install_site(site: Path, root: Path) -> list[str]:
    """Copy a ``pip --target`` tree into the guest's site-packages and its scripts into /usr/bin.

    The scripts' ``#!`` line names the host's interpreter; it becomes the guest's /usr/bin/python3.
    Returns the scripts' names.
    """
    dest = root / SITE
    dest.mkdir(parents=True, exist_ok=True)
    (root / SITE_PTH).parent.mkdir(parents=True, exist_ok=True)
    (root / SITE_PTH).write_text(f"/{SITE}\n")
    scripts: list[str] = []
    for entry in site.iterdir():
        if entry.name == "bin":
            for script in entry.iterdir():
                text = script.read_text()
                body = text.split("\n", 1)[1] if text.startswith("#!") else text
                out = root / "usr/bin" / script.name
                out.write_text("#!/usr/bin/python3\n" + body)
                out.chmod(0o755)
                scripts.append(script.name)
        elif entry.is_dir():
            shutil.copytree(entry, dest / entry.name, dirs_exist_ok=True, symlinks=True)
        else:
            shutil.copy2(entry, dest / entry.name)
    return scripts


def _enable(root: Path, unit: str, wanted_by: str, unit_dir: str = "usr/lib/systemd/system") -> None:
    wants = root / "etc/systemd/system" / f"{wanted_by}.wants"
    wants.mkdir(parents=True, exist_ok=True)
    link = wants / unit
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(f"/{unit_dir}/{unit}")


def _ids(root: Path, user: str, group: str) -> tuple[int, int]:
    def lookup(table: str, name: str) -> int:
        for line in (root / "etc" / table).read_text().splitlines():
            fields = line.split(":")
            if fields[0] == name:
                return int(fields[2])
        raise BuildError(f"no {name} in the image's /etc/{table}: the sysusers step did not create it")

    return lookup("passwd", user), lookup("group", group)


def mk_users(mk_text: str) -> list[str]:
    """systemd-sysusers lines for the accounts of a ``<PKG>_USERS`` block (Buildroot's makeusers
    format: ``name uid group gid password home shell groups comment``) in a package's .mk file.

    ``-1`` ids are allocated; a shell of ``-`` is ``/bin/false``, as makeusers has it.

    Raises:
        BuildError: the block is missing or a line has too few fields.
    """
    block = re.search(r"^define \w+_USERS\n(.*?)\nendef", mk_text, re.S | re.M)
    if block is None:
        raise BuildError(
            "no <PKG>_USERS block in the package's .mk file: the image has no account for dvrlinkd"
        )
    lines: list[str] = []
    for raw in block.group(1).splitlines():
        fields = raw.split(None, 8)
        if not fields:
            continue
        if len(fields) < 8:
            raise BuildError(
                f"a {block.group(0).split()[1]} line has {len(fields)} fields, makeusers wants 9: {raw!r}"
            )
        name, uid, group, gid, _password, home, shell, groups = fields[:8]
        comment = fields[8] if len(fields) > 8 else ""
        lines.append(f"g {group} {'-' if gid == '-1' else gid}")
        user_id = "-" if uid == "-1" else uid
        lines.append(
            f'u {name} {user_id}:{group} "{comment}" {"-" if home == "-" else home} '
            f"{'/bin/false' if shell == '-' else shell}"
        )
        if groups != "-":
            lines += [f"m {name} {extra}" for extra in groups.split(",")]
    return lines


def install_product_files(root: Path, progress: Progress, init: str = "systemd") -> None:
    """What Buildroot's dvrlink package (buildroot/package/dvrlink/dvrlink.mk) puts in an image.

    The broker and the viewer's CLI removed; the unit, the sysusers file and the preset; the
    example config, also as the default config;
    the ``dvrlink`` account in group dialout (its users table), made here with systemd-sysusers;
    the permissions of its state directory and config; then ``systemctl preset`` as Buildroot's
    preset-all would for this unit.

    For a BusyBox-init image (``init="busybox"``): S95dvrlinkd instead of the unit files, and the
    account from the package's ``DVRLINK_USERS`` (Buildroot's makeusers), with no preset.
    """
    for path in (*REMOVED_FROM_IMAGE, *(REMOVED_FROM_BUSYBOX_IMAGE if init == "busybox" else ())):
        target = root / path
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.exists() or target.is_symlink():
            target.unlink()
    for source, dest, mode in PACKAGE_INSTALLS_SYSV if init == "busybox" else PACKAGE_INSTALLS:
        if not source.is_file():
            raise BuildError(f"{source} is missing: the image takes it from this tree")
        (root / dest).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, root / dest)
        (root / dest).chmod(mode)
    env = _clean_env()
    if init == "busybox":
        users = mk_users((PACKAGE_DIR / "dvrlink.mk").read_text())
        progress.run(
            ["systemd-sysusers", f"--root={root}", "--inline", *users],
            env=env,
            what="the accounts of DVRLINK_USERS for the image",
        )
        return
    progress.run(["systemd-sysusers", f"--root={root}"], env=env, what="systemd-sysusers for the image")
    progress.run(
        ["systemd-sysusers", f"--root={root}", "--inline", "m dvrlink dialout"],
        env=env,
        what="adding dvrlink to group dialout in the image",
    )
    progress.run(
        ["systemctl", f"--root={root}", "preset", "dvrlinkd.service"],
        env=env,
        what="systemctl preset dvrlinkd",
    )


def set_permissions(root: Path) -> None:
    """dvrlink.mk's DVRLINK_PERMISSIONS, applied after the overlay as Buildroot's makedevs does."""
    uid, gid = _ids(root, "dvrlink", "dvrlink")
    state = root / "var/lib/dvrlink"
    state.mkdir(parents=True, exist_ok=True)
    os.chown(state, uid, gid)
    state.chmod(0o700)
    config = root / "etc/dvrlink/dvrlinkd.toml"
    os.chown(config.parent, 0, gid)
    config.parent.chmod(0o770)
    os.chown(config, 0, gid)
    config.chmod(0o640)


def apply_overlay(root: Path, overlay: Path) -> list[str]:
    """Copy an overlay tree over the root (as Buildroot's BR2_ROOTFS_OVERLAY does); returns the paths."""
    copied: list[str] = []
    if not overlay.is_dir():
        return copied
    for path in sorted(overlay.rglob("*")):
        rel = path.relative_to(overlay)
        dest = root / rel
        if path.is_dir() and not path.is_symlink():
            dest.mkdir(parents=True, exist_ok=True)
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.is_symlink() or dest.exists():
            dest.unlink()
        if path.is_symlink():
            dest.symlink_to(os.readlink(path))
        else:
            shutil.copy2(path, dest)
        copied.append(f"/{rel}")
    return copied


def apply_board(root: Path, target: Target, progress: Progress, board: Path = BOARD_DIR) -> list[str]:
    """The Buildroot board's overlay, then its post-build script as Buildroot runs it.

    Buildroot calls ``post-build.sh TARGET_DIR BOARD`` with HOST_DIR set; here HOST_DIR holds only
    ``bin/python3`` (this interpreter), which the script uses to check the config's TOML.
    """
    copied = apply_overlay(root, board / "rootfs-overlay")
    post_build = board / "post-build.sh"
    if post_build.is_file():
        with tempfile.TemporaryDirectory(prefix="dvrlink-hil-host-") as host_dir:
            (Path(host_dir) / "bin").mkdir()
            (Path(host_dir) / "bin/python3").symlink_to(sys.executable)
            env = _clean_env() | {
                "TARGET_DIR": str(root),
                "HOST_DIR": host_dir,
                "BR2_EXTERNAL_DVRLINK_PATH": str(REPO / "buildroot"),
            }
            progress.run(
                ["sh", str(post_build), str(root), target.buildroot_board],
                env=env,
                what=f"{post_build.relative_to(REPO)}",
            )
        copied.append(f"(ran {post_build.relative_to(REPO)} {target.buildroot_board})")
    return copied


def install_rig_files(root: Path, target: Target) -> list[str]:
    """The rig's own files (hil/qemu/guest): networking, config from fw_cfg, console autologin.

    These are the only files the rig adds to what the image ships; docs/hil.md lists them. A
    BusyBox-init board also gets its init (/sbin/init is busybox) and inittab and rcS, which
    Buildroot's skeleton would give it.
    """
    copied: list[str] = []
    for folder in target.guest_dirs:
        copied += apply_overlay(root, GUEST_FILES / folder)
    if target.init == "busybox":
        init = root / "sbin/init"
        if init.is_symlink() or init.exists():
            init.unlink()
        init.symlink_to("/bin/busybox")
        copied.append("/sbin/init -> /bin/busybox")
        return copied
    for unit, wanted_by in (
        ("systemd-networkd.service", "multi-user.target"),
        ("systemd-networkd.socket", "sockets.target"),
        ("systemd-networkd-wait-online.service", "network-online.target"),
    ):
        _enable(root, unit, wanted_by, "lib/systemd/system")
    _enable(root, "dvrlink-hil-config.service", "multi-user.target", "etc/systemd/system")
    return copied


def _image_size(root: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_size + 4096
    return int(total * 1.3) + 512 * 1024 * 1024


def build(target: Target, *, cache: Path | None = None, out: TextIO = sys.stdout) -> Image:
    """Build (or find) the image for ``target`` from the tree as it is now.

    Raises:
        BuildError: a step failed; the message says which and what to do.
    """
    layer_keys = keys(target)
    arch_dir = (cache or cache_root()) / target.name
    arch_dir.mkdir(parents=True, exist_ok=True)
    progress = Progress(target, arch_dir / "build.log", out)
    final = arch_dir / f"image-{layer_keys.image}"
    if (image := _load_image(final)) is not None:
        progress.say(f"image {layer_keys.image}: cached ({image.rootfs})")
        return image
    check_host(target)
    base = build_base(target, layer_keys.base, arch_dir, progress)
    deps = build_deps(target, layer_keys.deps, arch_dir, progress, base)
    dvrlink = build_dvrlink(target, layer_keys.dvrlink, arch_dir, progress)
    ext = build_extension(target, layer_keys.ext, arch_dir, progress, base)
    work = _fresh(final)
    root = work / "root"
    root.mkdir()
    progress.say(
        f"image {layer_keys.image}: unpacking base, adding dependencies, dvrlink and the image's files"
    )
    progress.run(
        ["tar", "--numeric-owner", "--xattrs", "-C", str(root), "-xf", str(base / "rootfs.tar")],
        what="unpacking the base root filesystem",
    )
    install_site(deps / "site", root)
    scripts = install_site(dvrlink / "site", root)
    install_extension(ext, root)
    install_product_files(root, progress, target.init)
    board = apply_board(root, target, progress)
    set_permissions(root)
    rig = install_rig_files(root, target)
    size = _image_size(root)
    progress.say(f"image {layer_keys.image}: mkfs.ext4 ({size // 2**20} MiB, sparse)")
    progress.run(
        [
            "mkfs.ext4",
            "-q",
            "-F",
            "-L",
            "dvrlink-root",
            "-d",
            str(root),
            str(work / "rootfs.ext4"),
            f"{size // 1024}k",
        ],
        what="making the ext4 root filesystem",
    )
    shutil.rmtree(root)
    base_manifest = json.loads((base / "manifest.json").read_text())
    _publish(
        work,
        final,
        {
            "layer": "image",
            "arch": target.name,
            "keys": {"base": layer_keys.base, "deps": layer_keys.deps, "dvrlink": layer_keys.dvrlink},
            "base_dir": str(base),
            "kernel": base_manifest["kernel"],
            "wheels": json.loads((deps / "manifest.json").read_text())["wheels"],
            "dvrlink_wheel": json.loads((dvrlink / "manifest.json").read_text()),
            "scripts": scripts,
            "board_files": board,
            "rig_files": rig,
        },
    )
    _prune(arch_dir, layer_keys)
    progress.say(f"image {layer_keys.image}: done")
    image = _load_image(final)
    assert image is not None
    return image


def _prune(arch_dir: Path, current: Keys) -> None:
    """Remove image and dvrlink layers of earlier trees (the base and deps layers stay)."""
    keep = {f"image-{current.image}", f"dvrlink-{current.dvrlink}"}
    for path in arch_dir.iterdir():
        if path.name.startswith(("image-", "dvrlink-")) and path.name not in keep and path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
