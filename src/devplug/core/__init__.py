"""The pure core: rules, device records, identity, the inventory, claims and container edits.

No I/O and no imports from the rest of devplug: the file system is reached only through
the callables the adapters pass in (attribute readers, ``PathMode``), so everything here is
fast to test and safe to fuzz.
"""
