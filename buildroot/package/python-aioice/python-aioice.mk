################################################################################
#
# python-aioice
#
################################################################################

PYTHON_AIOICE_VERSION = 0.13.0
PYTHON_AIOICE_SOURCE = aioice-$(PYTHON_AIOICE_VERSION).tar.gz
PYTHON_AIOICE_SITE = $(DVRLINK_PYTHON_SOURCES)/4a/16/fd4e7d1ccab77b6ae655bf6e796161586eeab18f5047c584bbedea846d66
PYTHON_AIOICE_SETUP_TYPE = setuptools
PYTHON_AIOICE_LICENSE = BSD-3-Clause
PYTHON_AIOICE_LICENSE_FILES = LICENSE

$(eval $(python-package))
