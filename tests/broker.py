"""The tests use the demo's throwaway broker: a free loopback port, never 1883."""

from agent.demo import Mosquitto, free_port

__all__ = ["Mosquitto", "free_port"]
