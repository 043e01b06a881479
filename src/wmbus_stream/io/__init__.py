"""Everything that touches the world: receiver ports, HTTP, systemd."""
