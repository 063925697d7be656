"""The one thing pyproject.toml cannot say: the optional C extension, and a way to leave it out.

``dvrlink.protocol._dataplane_seal`` (``protocol/_dataplane_seal.c``) frames and seals the data
plane's bulk packets against OpenSSL's libcrypto. It is optional: without a compiler or
libcrypto's headers the build goes on and the data plane seals in Python (the same bytes,
slower). ``DVRLINK_PURE=1`` leaves it out on purpose: the QEMU image rig builds a pure wheel on
the host and compiles the extension for the guest's architecture in its build chroot.
"""

import os

from setuptools import Extension, setup

EXTENSIONS = [
    Extension(
        "dvrlink.protocol._dataplane_seal",
        sources=["protocol/_dataplane_seal.c"],
        libraries=["crypto"],
        optional=True,
    )
]

setup(ext_modules=[] if os.environ.get("DVRLINK_PURE") else EXTENSIONS)
