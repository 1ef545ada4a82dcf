"""See the README roadmap: named configs and entry points land here."""
