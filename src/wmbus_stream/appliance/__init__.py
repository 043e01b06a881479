"""The flashable appliance: per-device provisioning at boot (``provision``) and A/B updates through RAUC (``slots``).

Both run as root on the device, from their systemd units (``data/wmbus-stream-provision.service``,
``data/wmbus-stream-confirm.service``) and from ``wmbus-stream provision`` / ``wmbus-stream update``;
every path they touch is a parameter, so the unit tier runs them on a temporary tree.
"""
