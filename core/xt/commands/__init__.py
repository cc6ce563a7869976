"""Click commands of the ``xt`` CLI, one module per area; none imports torch at import time."""
