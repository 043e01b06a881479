"""The gateway's state beyond its configuration: backup archives and restoring them (``backup``)."""
