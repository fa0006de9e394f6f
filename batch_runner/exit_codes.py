"""Exit codes: the interface for cron and scripts. Documented in the README; never renumber."""

OK = 0  # every item succeeded (or the command did what it was asked)
FAILED_ITEMS = 1  # the run finished with failed items
USAGE = 2  # invalid manifest or arguments; nothing was sent
BUDGET = 3  # stopped on credits, a team spend limit or the budget of all runs (max_cost)
FATAL_API = 4  # key, permission, endpoint, retired model, or a 406 for the content type
LOCKED = 5  # another run is using the output folder
INTERNAL = 70  # a bug; results already received are safe
OUTPUT_ERROR = 74  # the output folder cannot be written (disk full, read-only, permissions)
# the run's window closed or its share of the budget (max_cost_per_run) is spent, or the endpoint is
# unreachable or rate-limiting for longer than max_wait: run again later
TEMPORARY = 75
INTERRUPTED = 130  # Ctrl-C or SIGTERM
