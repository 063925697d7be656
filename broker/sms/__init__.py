"""The broker's SMS gateway: wake SMS to devices that sleep in ``sms-wake`` mode (docs/sms-wake.md).

``gateway.py`` holds the interface (:class:`~dvrlink.broker.sms.gateway.SmsGateway`) and the
message both backends send; ``modem.py`` sends through a modem on the broker host (the AT engine
and link the recorder uses); ``http_provider.py`` through an SMS provider's HTTP API described by config;
``wake.py`` decides when to send a wake, with which counter, and tracks each wake for the API.
"""
