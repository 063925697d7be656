################################################################################
#
# dvrlink
#
################################################################################

# The package is built from the repository this tree lives in (one folder up),
# so the image always carries the code next to it. Keep the version in step
# with pyproject.toml (tests/test_buildroot_tree.py checks it).
DVRLINK_VERSION = 0.1.0
DVRLINK_SITE = $(BR2_EXTERNAL_DVRLINK_PATH)/..
DVRLINK_SITE_METHOD = local
DVRLINK_SETUP_TYPE = setuptools
# setup.py's C extension (protocol/_dataplane_seal.c, the data plane's bulk
# sealer) links against libcrypto.
DVRLINK_DEPENDENCIES = openssl
DVRLINK_LICENSE = Apache-2.0
# Only what the wheel and the install steps need: not the developer's
# virtual environment, caches, tests, rigs or this tree itself.
DVRLINK_OVERRIDE_SRCDIR_RSYNC_EXCLUSIONS = \
	--exclude .venv --exclude .typecheck --exclude .mypy_cache \
	--exclude .ruff_cache --exclude .pytest_cache --exclude __pycache__ \
	--exclude '*.egg-info' --exclude build --exclude dist \
	--exclude tests --exclude bench --exclude hil --exclude buildroot \
	--exclude docs --exclude supervisor

# dialout: the modem's serial ports; the udev rules in the overlay give
# group dvrlink the modem's USB "authorized" file for the USB reset.
define DVRLINK_USERS
	dvrlink -1 dvrlink -1 * /var/lib/dvrlink - dialout dvrlink device daemon
endef

# The config may hold a SIM PIN and APN credentials: readable by the daemon's
# group only. Its folder is writable by that group: the installer console saves
# settings with a new file beside the config and a rename.
define DVRLINK_PERMISSIONS
	/var/lib/dvrlink d 700 dvrlink dvrlink - - - - -
	/etc/dvrlink d 770 root dvrlink - - - - -
	/etc/dvrlink/dvrlinkd.toml f 640 root dvrlink - - - - -
endef

define DVRLINK_INSTALL_CONFIG
	$(INSTALL) -D -m 0644 $(@D)/daemon/dvrlinkd.example.toml \
		$(TARGET_DIR)/usr/share/dvrlink/dvrlinkd.example.toml
	if [ ! -e $(TARGET_DIR)/etc/dvrlink/dvrlinkd.toml ]; then \
		$(INSTALL) -D -m 0644 $(@D)/daemon/dvrlinkd.example.toml \
			$(TARGET_DIR)/etc/dvrlink/dvrlinkd.toml; \
	fi
endef
DVRLINK_POST_INSTALL_TARGET_HOOKS += DVRLINK_INSTALL_CONFIG

# The recorder runs dvrlinkd only: the broker and the viewer's CLI (which need
# aiohttp) stay out of the image.
define DVRLINK_REMOVE_CLOUD_PROGRAMS
	rm -rf $(TARGET_DIR)/usr/lib/python$(PYTHON3_VERSION_MAJOR)/site-packages/dvrlink/broker \
		$(TARGET_DIR)/usr/lib/python$(PYTHON3_VERSION_MAJOR)/site-packages/dvrlink/viewer
	rm -f $(TARGET_DIR)/usr/bin/dvrlink-broker $(TARGET_DIR)/usr/bin/dvrlink
endef
DVRLINK_POST_INSTALL_TARGET_HOOKS += DVRLINK_REMOVE_CLOUD_PROGRAMS

define DVRLINK_INSTALL_INIT_SYSTEMD
	$(INSTALL) -D -m 0644 $(@D)/systemd/dvrlinkd.service \
		$(TARGET_DIR)/usr/lib/systemd/system/dvrlinkd.service
	$(INSTALL) -D -m 0644 $(@D)/systemd/dvrlink.sysusers.conf \
		$(TARGET_DIR)/usr/lib/sysusers.d/dvrlink.conf
	$(INSTALL) -D -m 0644 $(@D)/systemd/dvrlinkd-pppd.conf \
		$(TARGET_DIR)/usr/share/dvrlink/dvrlinkd-pppd.conf
	$(INSTALL) -D -m 0644 $(DVRLINK_PKGDIR)/50-dvrlink.preset \
		$(TARGET_DIR)/usr/lib/systemd/system-preset/50-dvrlink.preset
endef

define DVRLINK_INSTALL_INIT_SYSV
	$(INSTALL) -D -m 0755 $(BR2_EXTERNAL_DVRLINK_PATH)/board/dvrlink/S95dvrlinkd \
		$(TARGET_DIR)/etc/init.d/S95dvrlinkd
endef

$(eval $(python-package))
