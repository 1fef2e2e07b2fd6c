"""Drivers: the base class to subclass, and the built-in drivers.

Importing this package registers the built-in drivers; a third-party package
registers its own through the `edge_agent.drivers` entry point group.
"""

from drivers import bme280, counter, nmea, pms5003, random_walk, replay, serial_line, sht31, sine
from drivers.base import Channel, Driver, Garbled, Sample
from drivers.simulated import InjectedFault, Signal, Simulated

__all__ = [
    "Channel",
    "Driver",
    "Garbled",
    "InjectedFault",
    "Sample",
    "Signal",
    "Simulated",
    "bme280",
    "counter",
    "nmea",
    "pms5003",
    "random_walk",
    "replay",
    "serial_line",
    "sht31",
    "sine",
]
