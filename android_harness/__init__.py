"""Clients on ARM and Android: emulated aarch64 clients here, an adb harness for devices."""
