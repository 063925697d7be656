include $(sort $(wildcard $(BR2_EXTERNAL_DVRLINK_PATH)/package/*/*.mk))
