################################################################################
#
# python-pylsqpack
#
################################################################################

PYTHON_PYLSQPACK_VERSION = 1.0.0
PYTHON_PYLSQPACK_SOURCE = pylsqpack-$(PYTHON_PYLSQPACK_VERSION).tar.gz
PYTHON_PYLSQPACK_SITE = $(DVRLINK_PYTHON_SOURCES)/ab/c7/c1b013f8e5ae667305c5d9a76697f8cbd81874ce6ebc8271d1f5bdb5e51b
PYTHON_PYLSQPACK_SETUP_TYPE = setuptools
# pylsqpack itself, the bundled ls-qpack and ls-qpack's bundled xxhash
PYTHON_PYLSQPACK_LICENSE = BSD-3-Clause, MIT (ls-qpack), BSD-2-Clause (xxhash)
PYTHON_PYLSQPACK_LICENSE_FILES = LICENSE vendor/ls-qpack/LICENSE

$(eval $(python-package))
