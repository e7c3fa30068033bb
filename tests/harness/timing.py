"""The slack every timed assertion in the suite states.

Tests check the deadlines the code promises ("gives up within the retry budget", "returns at
the sweep's deadline", "waits no deadline"), never raw speed (bench/ holds the speed targets).
On a loaded 2-core CI host a step takes its budget plus scheduling delays — a ready thread or
process may wait a second or more for a core — so a timed assertion reads
``elapsed < BUDGET + SLACK_S``, its BUDGET named in the test (0 for a step that must not wait at
all), and what the timing alone cannot tell apart is checked by counting (calls, timeouts).
"""

# What scheduling on a loaded CI host may add to any timed step.
SLACK_S = 2.0
# Starting a Python command for a test (the interpreter and its imports) on a loaded host.
COMMAND_START_S = 15.0
