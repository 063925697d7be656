"""The QEMU rig: the image's files, booted on emulated ARM.

``python -m hil.qemu build --arch arm64`` assembles a root filesystem from Debian's packages for the
architecture, installs dvrlink and its dependencies from wheels for the target platform, and applies
the image's overlay and init files; ``python -m hil.qemu boot --arch arm64`` boots it with Debian's
kernel under TCG. See docs/hil.md.
"""
