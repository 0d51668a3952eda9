"""``python -m services.audit [serve|migrate|verify]``."""

import sys

from services.audit.app import MIGRATIONS, build, verify_command
from services.audit.settings import Settings
from shared.runtime import main

if __name__ == "__main__":
    sys.exit(main(build, sys.argv[1:], settings=Settings, migrations=MIGRATIONS,
                  extra={"verify": verify_command}))
