################################################################################
#
# python-aioquic
#
################################################################################

PYTHON_AIOQUIC_VERSION = 1.7.2
PYTHON_AIOQUIC_SOURCE = aioquic-$(PYTHON_AIOQUIC_VERSION).tar.gz
PYTHON_AIOQUIC_SITE = $(DVRLINK_PYTHON_SOURCES)/7a/9a/e62685ca8f24e6cefa554f2cda6aa5363822391f945c264289a1e236ca8a
PYTHON_AIOQUIC_SETUP_TYPE = setuptools
PYTHON_AIOQUIC_LICENSE = BSD-3-Clause
PYTHON_AIOQUIC_LICENSE_FILES = LICENSE

$(eval $(python-package))
