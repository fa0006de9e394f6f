"""Exit codes: the interface for cron and scripts. Documented in the README; never renumber."""

OK = 0  # every item succeeded (or the command did what it was asked)
FAILED_ITEMS = 1  # the run finished with failed items
USAGE = 2  # invalid manifest or arguments; nothing was sent
BUDGET = 3  # stopped on credits, a team spend limit or --max-cost
FATAL_API = 4  # key, permission, endpoint, retired model, or a 406 for the content type
LOCKED = 5  # another run is using the output folder
INTERNAL = 70  # a bug; results already received are safe
OUTPUT_ERROR = 74  # the output folder cannot be written (disk full, read-only, permissions)
TEMPORARY = 75  # the endpoint is unreachable or rate-limiting for longer than --max-wait: run again later
INTERRUPTED = 130  # Ctrl-C or SIGTERM
