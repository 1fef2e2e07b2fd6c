import agent.stages  # noqa: F401  # registers the built-in stages
import drivers  # noqa: F401  # registers the built-in drivers
