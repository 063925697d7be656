# The sdists of the Python packages below (those Buildroot lacks) come from the Python Package
# Index's file store. Its address is a build setting, not written here: pass
# DVRLINK_PYTHON_SOURCES=<the address the index's "Download files" links start with, up to and
# including /packages> on the make command line or in the environment, or set
# BR2_DVRLINK_PYTHON_SOURCES in menuconfig. A mirror in BR2_PRIMARY_SITE that holds the sdists
# (flat, by file name) is tried first either way. See buildroot/README.md.
DVRLINK_PYTHON_SOURCES ?= $(call qstrip,$(BR2_DVRLINK_PYTHON_SOURCES))

ifneq ($(BR2_PACKAGE_PYTHON_AIOICE)$(BR2_PACKAGE_PYTHON_AIOQUIC)$(BR2_PACKAGE_PYTHON_PYLSQPACK),)
ifeq ($(DVRLINK_PYTHON_SOURCES),)
$(error dvrlink: set DVRLINK_PYTHON_SOURCES (or BR2_DVRLINK_PYTHON_SOURCES) to the Python Package Index's download address ending in /packages, so that python-aioice, python-aioquic and python-pylsqpack can be fetched; see buildroot/README.md)
endif
endif

include $(sort $(wildcard $(BR2_EXTERNAL_DVRLINK_PATH)/package/*/*.mk))
