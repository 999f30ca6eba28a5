"""Real USB hot-plug: a QEMU guest with the real kernel USB stack (see guest.py, README)."""
