"""``python -m services.intake [serve|migrate]``."""

import sys

from services.intake.app import MIGRATIONS, build
from services.intake.settings import Settings
from shared.runtime import main

if __name__ == "__main__":
    sys.exit(main(build, sys.argv[1:], settings=Settings, migrations=MIGRATIONS))
