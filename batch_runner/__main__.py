import sys

from batch_runner.cli.main import main

sys.exit(main())
