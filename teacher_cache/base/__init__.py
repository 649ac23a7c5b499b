"""The ground floor every layer stands on: one-line errors, settings, logging and progress, atomic writes, the
folder lock, signals, the one check of names read from a folder, the bundled data. Imports nothing above it."""
