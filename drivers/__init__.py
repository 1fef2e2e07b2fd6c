"""Drivers: the base class to subclass, and the built-in drivers.

Importing this package registers the built-in drivers; a third-party package
registers its own through the `edge_agent.drivers` entry point group.
"""

from drivers import bme280, counter, random_walk, replay, sht31, sine
from drivers.base import Channel, Driver, Sample
from drivers.simulated import InjectedFault, Signal, Simulated

__all__ = [
    "Channel",
    "Driver",
    "InjectedFault",
    "Sample",
    "Signal",
    "Simulated",
    "bme280",
    "counter",
    "random_walk",
    "replay",
    "sht31",
    "sine",
]
