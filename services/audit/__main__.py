"""``python -m services.audit [serve|migrate|verify]``."""

import sys

from services.audit.app import build, migrate_command, verify_command
from shared.runtime import main

if __name__ == "__main__":
    sys.exit(main(build, sys.argv[1:], extra={"migrate": migrate_command, "verify": verify_command}))
