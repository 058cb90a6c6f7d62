"""The appliance OS image: recipe.toml (Debian bookworm, packages, enabled units) and
build.py (debootstrap, the package in a venv, the units, a squashfs or ext4 image)."""
