"""Infrastructure every adapter shares (structured logging, inotify under trio).

Imports nothing else of devplug, and the core imports nothing from here.
"""
