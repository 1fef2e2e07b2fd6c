"""edge-agent: read sensors, aggregate on the board, forward what matters.

This module stays import-light on purpose: `edge-agent --version` must not pay
for the pipeline, the drivers or any third-party package.
"""

__version__ = "0.1.0"
