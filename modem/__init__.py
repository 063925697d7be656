"""The cellular modem: AT engine, modem manager, data links, recovery ladder (see README.md).

Importing the package itself loads nothing else, so a daemon's config can name the provider
database's default path without loading the modem stack.
"""

from pathlib import Path

DEFAULT_PROVIDER_DATABASE = Path("/usr/share/mobile-broadband-provider-info/serviceproviders.xml")
"""Where mobile-broadband-provider-info installs its database (Debian and Buildroot)."""
